"""DP-SGD: exact per-sample gradients, clipping, Poisson batches, accounting, plain-SGD limit."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.ml.databank import DataBank
from fedcare.ml.dp_sgd import (
    DPSGDConfig,
    DPSGDTrainer,
    dp_sgd_generators,
    poisson_schedule,
    sampling_rate,
)
from fedcare.ml.losses import per_sample_loss
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.torch_adapter import load_vector
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from fedcare.privacy.accountant import PrivacyAccountant
from tests.conftest import make_sites

MODELS = {
    "logistic": ((5,), 3, {}),
    "mlp": ((5,), 2, {"hidden": (8, 6)}),
    "cnn": ((1, 12, 12), 2, {"width": 3}),
}


def model_and_batch(name, rows=7, seed=0):
    shape, classes, params = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(name, shape, classes, **params)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, *shape, generator=gen)
    y = torch.randint(0, classes, (rows,), generator=gen)
    return model, classes, x, y


def naive_per_sample_gradients(model, classes, x, y):
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        per_sample_loss(model(x[i : i + 1]), y[i : i + 1], classes).sum().backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(out)


@pytest.mark.parametrize("name", list(MODELS))
def test_per_sample_gradients_equal_a_naive_loop_over_examples(name):
    model, classes, x, y = model_and_batch(name)
    trainer = DPSGDTrainer(model, classes, DPSGDConfig(noise_multiplier=1.0, clip_norm=1.0))
    flat = torch.from_numpy(trainer.initial_vector())
    grads, _ = trainer.per_sample_gradients(flat, x, y)
    vectorised = torch.cat([g.reshape(x.shape[0], -1) for g in grads.values()], dim=1)
    expected = naive_per_sample_gradients(model, classes, x, y)
    rel = (vectorised - expected).norm(dim=1) / expected.norm(dim=1)
    assert float(rel.max()) < 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_every_clipped_per_sample_gradient_has_norm_at_most_c(name):
    model, classes, x, y = model_and_batch(name, rows=9)
    clip = 0.05  # smaller than the typical gradient, so most samples are clipped
    trainer = DPSGDTrainer(model, classes, DPSGDConfig(noise_multiplier=0.0, clip_norm=clip))
    flat = torch.from_numpy(trainer.initial_vector())
    for i in range(x.shape[0]):  # a batch of one: the clipped sum is that sample's gradient
        total, norms, _ = trainer.clipped_gradient_sum(flat, x[i : i + 1], y[i : i + 1])
        assert float(total.norm()) <= clip
        if float(norms[0]) > clip:
            assert float(total.norm()) == pytest.approx(clip, rel=1e-4)
    total, norms, _ = trainer.clipped_gradient_sum(flat, x, y)
    assert (norms > clip).any()
    assert float(total.norm()) <= clip * x.shape[0]


@pytest.mark.parametrize(
    ("name", "shape", "classes", "params"),
    [
        ("mlp", (2, 3), 2, {"hidden": (8, 6)}),  # 2-D inputs are flattened
        ("mlp", (5,), 4, {"hidden": (7,)}),
        ("logistic", (2, 3), 3, {}),
        ("cnn", (1, 12, 12), 2, {"width": 3}),
        ("cnn", (3, 8, 8), 3, {"width": 2}),
    ],
)
def test_layerwise_fast_path_gives_the_same_clipped_sum_and_norms_as_vmap(
    name, shape, classes, params
):
    torch.manual_seed(8)
    model = build_model(name, shape, classes, **params)
    x = torch.randn(11, *shape)
    y = torch.randint(0, classes, (11,))
    config = DPSGDConfig(noise_multiplier=1.0, clip_norm=0.3)
    fast = DPSGDTrainer(model, classes, config)
    assert fast.method == "layerwise"
    vmapped = DPSGDTrainer(model, classes, config, method="vmap")
    flat = torch.from_numpy(fast.initial_vector())
    sum_f, norms_f, loss_f = fast.clipped_gradient_sum(flat, x, y)
    sum_v, norms_v, loss_v = vmapped.clipped_gradient_sum(flat, x, y)
    assert (norms_v > 0.3).any()  # some samples are clipped
    torch.testing.assert_close(norms_f, norms_v, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss_f, loss_v, rtol=1e-6, atol=1e-7)
    assert float((sum_f - sum_v).norm() / sum_v.norm()) < 1e-5


def test_user_models_use_vmap():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    assert DPSGDTrainer(model, 2, DPSGDConfig(1.0, 1.0)).method == "vmap"
    with pytest.raises(ConfigError, match="fedcare's models"):
        DPSGDTrainer(model, 2, DPSGDConfig(1.0, 1.0), method="layerwise")


def bank_for(sizes, num_features=5, seed=0):
    dataset = make_sites(sizes, num_features=num_features, seed=seed)
    return dataset, DataBank.from_arrays(
        [s.x_train for s in dataset.sites], [s.y_train for s in dataset.sites]
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_without_noise_or_clipping_it_equals_plain_sgd_on_the_same_batches(optimizer):
    torch.manual_seed(3)
    _, bank = bank_for([40, 24])  # batch 8 divides both: every batch is full
    model = build_model("mlp", (5,), 2, hidden=(16,))
    spec = TrainSpec(optimizer=optimizer, lr=0.1, epochs=2, batch_size=8, weight_decay=1e-3)
    seeds = SeedStream(1)
    schedules = [
        batch_schedule(int(n), spec, seeds.generator("batches", 0, i))
        for i, n in enumerate(bank.counts)
    ]
    objectives = [LocalObjective()] * 2
    plain = LocalTrainer(model, 2, mode="sequential")
    starts = np.tile(plain.initial_vector(), (2, 1))
    expected = plain.train(bank, [0, 1], starts, schedules, objectives, spec)
    dp = DPSGDTrainer(model, 2, DPSGDConfig(noise_multiplier=0.0, clip_norm=math.inf))
    accountants = [PrivacyAccountant(delta=1e-5) for _ in range(2)]
    got = dp.train(bank, [0, 1], starts, schedules, objectives, spec, accountants=accountants)
    np.testing.assert_allclose(got.params, expected.params, atol=1e-5)
    np.testing.assert_array_equal(got.num_steps, expected.num_steps)
    np.testing.assert_allclose(got.train_loss, expected.train_loss, atol=1e-5)
    assert all(math.isinf(a.epsilon()) for a in accountants)  # no noise: no privacy


def test_cnn_without_noise_or_clipping_equals_plain_sgd():
    torch.manual_seed(7)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 1, 12, 12)).astype(np.float32)
    bank = DataBank.from_arrays([x], [rng.integers(0, 2, 12)])
    model = build_model("cnn", (1, 12, 12), 2, width=3)
    spec = TrainSpec(lr=0.3, steps=4, batch_size=4)
    schedules = [batch_schedule(12, spec, np.random.default_rng(1))]
    plain = LocalTrainer(model, 2, mode="sequential")
    start = plain.initial_vector()[None]
    expected = plain.train(bank, [0], start, schedules, [LocalObjective()], spec)
    dp = DPSGDTrainer(model, 2, DPSGDConfig(noise_multiplier=0.0, clip_norm=math.inf))
    got = dp.train(
        bank, [0], start, schedules, [LocalObjective()], spec,
        accountants=[PrivacyAccountant(1e-5)],
    )  # fmt: skip
    np.testing.assert_allclose(got.params, expected.params, atol=1e-5)


def test_prox_term_matches_the_plain_trainer_too():
    torch.manual_seed(4)
    _, bank = bank_for([16])
    model = build_model("logistic", (5,), 2)
    spec = TrainSpec(lr=0.2, steps=5, batch_size=4)
    schedules = [batch_schedule(16, spec, np.random.default_rng(0))]
    plain = LocalTrainer(model, 2, mode="sequential")
    start = plain.initial_vector()[None]
    anchor = np.zeros_like(start[0])
    objective = [LocalObjective(prox_mu=0.5, anchor=anchor)]
    expected = plain.train(bank, [0], start, schedules, objective, spec)
    dp = DPSGDTrainer(model, 2, DPSGDConfig(noise_multiplier=0.0, clip_norm=math.inf))
    got = dp.train(
        bank, [0], start, schedules, objective, spec, accountants=[PrivacyAccountant(1e-5)]
    )
    np.testing.assert_allclose(got.params, expected.params, atol=1e-5)


def test_poisson_schedule_includes_each_row_with_probability_q():
    spec = TrainSpec(batch_size=10, steps=4000)
    schedule = poisson_schedule(50, spec, np.random.default_rng(0))
    assert schedule.shape[0] == 4000
    sizes = (schedule >= 0).sum(axis=1)
    assert sizes.mean() == pytest.approx(10, rel=0.02)
    assert sizes.var() == pytest.approx(50 * 0.2 * 0.8, rel=0.1)  # binomial(50, 0.2)
    counts = np.bincount(schedule[schedule >= 0], minlength=50)
    assert counts.min() > 0.85 * 800 and counts.max() < 1.15 * 800
    again = poisson_schedule(50, spec, np.random.default_rng(0))
    np.testing.assert_array_equal(schedule, again)
    assert sampling_rate(50, spec) == 0.2
    assert sampling_rate(5, spec) == 1.0


def test_every_step_is_charged_to_the_site_accountant_and_noise_is_seeded():
    torch.manual_seed(5)
    _, bank = bank_for([30, 60])
    model = build_model("mlp", (5,), 2, hidden=(8,))
    spec = TrainSpec(lr=0.1, epochs=2, batch_size=6)
    config = DPSGDConfig(noise_multiplier=1.1, clip_norm=1.0)
    trainer = DPSGDTrainer(model, 2, config)
    seeds = SeedStream(11)

    def run():
        schedules = [
            poisson_schedule(int(n), spec, seeds.generator("batches", 0, i))
            for i, n in enumerate(bank.counts)
        ]
        accountants = [PrivacyAccountant(delta=1e-5) for _ in range(2)]
        rngs = [seeds.generator("noise", 0, i) for i in range(2)]
        starts = np.tile(trainer.initial_vector(), (2, 1))
        result = trainer.train(
            bank, [0, 1], starts, schedules, [LocalObjective()] * 2, spec,
            accountants=accountants, noise_rngs=rngs,
        )  # fmt: skip
        return result, accountants

    first, accountants = run()
    second, _ = run()
    np.testing.assert_array_equal(first.params, second.params)
    np.testing.assert_array_equal(first.num_steps, [10, 20])
    for acc, n, steps in zip(accountants, (30, 60), (10, 20), strict=True):
        [release] = acc.releases
        assert (release.noise_multiplier, release.count) == (1.1, steps)
        assert release.sampling_rate == pytest.approx(6 / n)
    assert accountants[0].epsilon() > accountants[1].epsilon()  # larger q, fewer rows


def test_noise_has_standard_deviation_z_c_over_the_expected_batch():
    _, bank = bank_for([20])
    model = build_model("logistic", (5,), 2)
    config = DPSGDConfig(noise_multiplier=2.0, clip_norm=0.5)
    trainer = DPSGDTrainer(model, 2, config)
    spec = TrainSpec(lr=1.0, steps=1, batch_size=4)
    empty = np.full((1, 1), -1, dtype=np.int64)  # an empty Poisson batch: pure noise step
    start = np.zeros((1, trainer.layout.size), dtype=np.float32)
    stds = []
    for seed in range(300):
        result = trainer.train(
            bank, [0], start, [empty], [LocalObjective()], spec,
            accountants=[PrivacyAccountant(1e-5)], noise_rngs=[np.random.default_rng(seed)],
        )  # fmt: skip
        stds.append(result.params[0])
    assert np.std(stds) == pytest.approx(2.0 * 0.5 / 4, rel=0.05)


@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn"])
def test_dp_sgd_trains_each_fedcare_model(name):
    torch.manual_seed(6)
    rng = np.random.default_rng(0)
    shape, classes, params = MODELS[name]
    y = rng.integers(0, classes, 120)
    x = rng.normal(size=(120, *shape)).astype(np.float32)
    # The class shifts the first few features (the top rows of an image) up or down.
    x.reshape(120, -1)[:, :48] += (y[:, None] - (classes - 1) / 2).astype(np.float32)
    bank = DataBank.from_arrays([x], [y])
    model = build_model(name, shape, classes, **params)
    trainer = DPSGDTrainer(model, classes, DPSGDConfig(noise_multiplier=0.3, clip_norm=1.0))
    spec = TrainSpec(lr=0.5, epochs=4, batch_size=20)
    start = trainer.initial_vector()[None]

    def loss(vector):
        load_vector(model, vector, trainer.layout)
        with torch.no_grad():
            return float(per_sample_loss(model(bank.x), bank.y, classes).mean())

    schedule = poisson_schedule(120, spec, np.random.default_rng(1))
    result = trainer.train(
        bank, [0], start, [schedule], [LocalObjective()], spec,
        accountants=[PrivacyAccountant(1e-5)], noise_rngs=[np.random.default_rng(2)],
    )  # fmt: skip
    assert loss(result.params[0]) < 0.9 * loss(start[0])


def test_models_with_batch_norm_and_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="batch"):
        DPSGDTrainer(build_model("mlp", (3,), 2, norm=True), 2, DPSGDConfig(1.0, 1.0))
    with pytest.raises(ConfigError, match="clip_norm"):
        DPSGDConfig(noise_multiplier=1.0, clip_norm=math.inf)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        DPSGDConfig(noise_multiplier=-0.5, clip_norm=1.0)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # Opacus's hooks
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_per_sample_gradients_equal_opacus(name):
    opacus = pytest.importorskip("opacus")
    model, classes, x, y = model_and_batch(name, rows=6)
    trainer = DPSGDTrainer(model, classes, DPSGDConfig(noise_multiplier=1.0, clip_norm=1.0))
    grads, _ = trainer.per_sample_gradients(torch.from_numpy(trainer.initial_vector()), x, y)
    ours = torch.cat([g.reshape(6, -1) for g in grads.values()], dim=1)
    wrapped = opacus.GradSampleModule(model, loss_reduction="sum")
    per_sample_loss(wrapped(x), y, classes).sum().backward()
    theirs = torch.cat([p.grad_sample.reshape(6, -1) for p in wrapped.parameters()], dim=1)
    wrapped._close()
    assert float(((ours - theirs).norm(dim=1) / theirs.norm(dim=1)).max()) < 1e-5


def test_each_site_trains_and_is_charged_at_its_own_noise_multiplier():
    """Per-site z (sample_dp calibrates one per site): a site's noise scales with its own z."""
    _, bank = bank_for([20, 20])
    model = build_model("logistic", (5,), 2)
    trainer = DPSGDTrainer(model, 2, DPSGDConfig(noise_multiplier=1.0, clip_norm=0.5))
    spec = TrainSpec(lr=1.0, steps=1, batch_size=4)
    empty = np.full((1, 1), -1, dtype=np.int64)  # pure noise steps
    start = np.zeros((2, trainer.layout.size), dtype=np.float32)
    steps = []
    for seed in range(200):
        accountants = [PrivacyAccountant(1e-5), PrivacyAccountant(1e-5)]
        result = trainer.train(
            bank, [0, 1], start, [empty, empty], [LocalObjective()] * 2, spec,
            accountants=accountants,
            noise_rngs=[np.random.default_rng(seed), np.random.default_rng(10_000 + seed)],
            noise_multipliers=[0.5, 3.0],
        )  # fmt: skip
        steps.append(result.params)
    stds = np.std(np.stack(steps), axis=(0, 2))
    assert stds == pytest.approx([0.5 * 0.5 / 4, 3.0 * 0.5 / 4], rel=0.07)
    assert [a.releases[0].noise_multiplier for a in accountants] == [0.5, 3.0]
    with pytest.raises(ConfigError, match="noise_multiplier"):
        trainer.train(
            bank, [0, 1], start, [empty, empty], [LocalObjective()] * 2, spec,
            accountants=accountants, noise_multipliers=[1.0, -1.0],
        )  # fmt: skip


def test_dp_sgd_generators_are_keyed_by_round_and_site_apart_from_every_other_draw():
    seeds = SeedStream(3)
    batches, noise = dp_sgd_generators(seeds, 2, 1)
    _, again_noise = dp_sgd_generators(seeds, 2, 1)
    first = noise.random(4)
    np.testing.assert_array_equal(first, again_noise.random(4))
    # The batches are the plain trainer's key, so a run's batch RNG is one stream per site.
    np.testing.assert_array_equal(batches.random(4), seeds.generator("batches", 2, 1).random(4))
    others = [
        seeds.generator("noise", 2, 1),  # client-level DP's keys
        seeds.generator("noise", 3, 2),
        dp_sgd_generators(seeds, 2, 0)[1],
        dp_sgd_generators(seeds, 1, 1)[1],
        dp_sgd_generators(SeedStream(4), 2, 1)[1],
    ]
    for other in others:
        assert not np.array_equal(first, other.random(4))
