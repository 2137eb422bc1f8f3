"""The server step runs block by block: same bits as the whole-vector formulas, inputs
untouched, and no model-sized temporaries (what keeps a 100 MB coordinator near 3x)."""

import tracemalloc

import numpy as np
import pytest

from fedcare.algorithms.server_optim import BLOCK_ELEMENTS, Moments, ServerOptimizer

F32 = np.float32
# Several blocks plus a ragged tail, so block edges are crossed.
SIZE = 2 * BLOCK_ELEMENTS + 12345


def whole_vector_step(opt: ServerOptimizer, x: np.ndarray, d: np.ndarray, mo: Moments):
    """The formulas as they were written before blocks: one expression per whole vector."""
    lr, b1, b2, tau = opt.lr, opt.beta1, opt.beta2, opt.tau
    if opt.name == "sgd" and opt.momentum > 0:
        v = (opt.momentum * mo["opt/v"] + d).astype(F32)
        return (x + lr * v).astype(F32), {"opt/v": v}
    if opt.name == "sgd":
        return (x + lr * d).astype(F32), {}
    if opt.name == "adagrad":
        v = (mo["opt/v"] + d * d).astype(F32)
        return (x + lr * d / (np.sqrt(v) + tau)).astype(F32), {"opt/v": v}
    m = (b1 * mo["opt/m"] + (1 - b1) * d).astype(F32)
    if opt.name == "adam":
        v = (b2 * mo["opt/v"] + (1 - b2) * d * d).astype(F32)
    else:
        d2 = d * d
        v = (mo["opt/v"] - (1 - b2) * d2 * np.sign(mo["opt/v"] - d2)).astype(F32)
    return (x + lr * m / (np.sqrt(v) + tau)).astype(F32), {"opt/m": m, "opt/v": v}


OPTIMIZERS = [
    ServerOptimizer("sgd", lr=1.0),
    ServerOptimizer("sgd", lr=0.37),
    ServerOptimizer("sgd", lr=0.5, momentum=0.9),
    ServerOptimizer("adagrad", lr=0.01),
    ServerOptimizer("adam", lr=0.01),
    ServerOptimizer("yogi", lr=0.01),
]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o.name}-lr{o.lr}-m{o.momentum}")
@pytest.mark.parametrize("delta_dtype", [np.float32, np.float64])
def test_blockwise_step_is_bit_identical_to_the_whole_vector_formula(opt, delta_dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=SIZE).astype(F32)
    d = rng.normal(scale=0.1, size=SIZE).astype(delta_dtype)
    moments = opt.init(SIZE)
    for _ in range(2):  # moments that moved away from their initial values
        want_x, want_m = whole_vector_step(opt, x, d, moments)
        got_x, got_m = opt.step(x, d, moments)
        assert got_x.dtype == F32 and got_x.tobytes() == want_x.tobytes()
        assert sorted(got_m) == sorted(want_m)
        for key in want_m:
            assert got_m[key].tobytes() == want_m[key].tobytes(), key
        x, moments = got_x, got_m


def test_the_step_leaves_its_inputs_unchanged():
    opt = ServerOptimizer("adam", lr=0.01)
    x = np.ones(SIZE, dtype=F32)
    d = np.full(SIZE, 0.25, dtype=F32)
    moments = opt.init(SIZE)
    before = {k: v.copy() for k, v in moments.items()}
    opt.step(x, d, moments)
    assert np.all(x == 1) and np.all(d == 0.25)
    for key, value in before.items():
        assert np.array_equal(moments[key], value)


def test_an_empty_model_steps_to_an_empty_model():
    new, moments = ServerOptimizer("yogi").step(
        np.zeros(0, F32), np.zeros(0, F32), ServerOptimizer("yogi").init(0)
    )
    assert new.shape == (0,) and moments["opt/m"].shape == (0,) and moments["opt/v"].shape == (0,)


def test_plain_sgd_allocates_the_new_model_and_one_block_of_temporaries():
    size = 16 * BLOCK_ELEMENTS  # 16 MiB of float32
    x = np.zeros(size, dtype=F32)
    d = np.ones(size, dtype=F32)
    tracemalloc.start()  # numpy reports its array buffers to tracemalloc
    try:
        new, _ = ServerOptimizer("sgd", lr=0.5).step(x, d, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert new[0] == 0.5
    # The whole-vector formula peaked at three model-sized arrays (lr * d, the sum, its copy).
    assert peak < x.nbytes + 4 * BLOCK_ELEMENTS * 4, peak / x.nbytes


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o.name}-lr{o.lr}-m{o.momentum}")
def test_a_step_written_over_its_spent_delta_gives_the_same_bits(opt):
    rng = np.random.default_rng(11)
    x = rng.normal(size=SIZE).astype(F32)
    d = rng.normal(scale=0.1, size=SIZE).astype(F32)
    moments = opt.init(SIZE)
    want_x, want_m = opt.step(x, d, moments)
    spent = d.copy()
    got_x, got_m = opt.step(x, spent, moments, into=spent)
    assert got_x is spent  # no new model-sized array: the delta's memory is the new model
    assert got_x.tobytes() == want_x.tobytes()
    for key in want_m:
        assert got_m[key].tobytes() == want_m[key].tobytes(), key


def test_a_spent_sgd_step_allocates_only_one_block_of_temporaries():
    size = 16 * BLOCK_ELEMENTS
    x = np.zeros(size, dtype=F32)
    d = np.ones(size, dtype=F32)
    tracemalloc.start()
    try:
        new, _ = ServerOptimizer("sgd", lr=0.5).step(x, d, {}, into=d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert new is d and new[0] == 0.5 and np.all(x == 0)
    assert peak < 4 * BLOCK_ELEMENTS * 4, peak / x.nbytes


def test_a_step_refuses_an_output_of_the_wrong_type_or_size():
    x = np.zeros(10, dtype=F32)
    with pytest.raises(ValueError, match="float32 vector of 10 values, found float64"):
        ServerOptimizer("sgd").step(x, np.ones(10), {}, into=np.ones(10))
    with pytest.raises(ValueError, match=r"found float32 of shape \(9,\)"):
        ServerOptimizer("sgd").step(x, np.ones(10, F32), {}, into=np.ones(9, F32))
