"""Adding masks: in place, in Z_{2**32}, and the same on any number of threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.secagg.crypto import KeyPair
from fedcare.secagg.masks import (
    add_masks,
    add_masks_threaded,
    default_workers,
    mask_sum,
    pair_seed,
    pair_sign,
)
from fedcare.secagg.prg import expand_mask
from tests.secagg.harness import seeded_rng

masks_strategy = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.sampled_from([1, -1])), max_size=8
)


def expected_sum(length: int, masks) -> np.ndarray:
    total = np.zeros(length, dtype=np.int64)
    for seed, sign in masks:
        total += sign * expand_mask(seed, length).astype(np.int64)
    return (total % 2**32).astype(np.uint32)


@settings(max_examples=30, deadline=None)
@given(masks=masks_strategy, length=st.integers(1, 500), workers=st.integers(1, 4))
def test_mask_sum_is_the_signed_sum_mod_2_32_for_any_worker_count(masks, length, workers):
    assert np.array_equal(mask_sum(length, masks, workers), expected_sum(length, masks))


@settings(max_examples=20, deadline=None)
@given(masks=masks_strategy, length=st.integers(1, 500))
def test_add_masks_adds_in_place(masks, length):
    start = np.arange(length, dtype=np.uint32) * np.uint32(2_654_435_761)
    acc = start.copy()
    add_masks(acc, masks)
    assert np.array_equal(acc, start + expected_sum(length, masks))


def test_threads_share_out_many_masks_over_a_long_vector():
    rng = seeded_rng(0)
    masks = [(rng(32), 1 if k % 3 else -1) for k in range(17)]
    length = 70_001  # two keystream chunks per mask
    one = mask_sum(length, masks, 1)
    assert np.array_equal(one, mask_sum(length, masks, 3))
    assert np.array_equal(one, expected_sum(length, masks))


def test_both_ends_of_a_pair_derive_the_same_seed_and_their_masks_cancel():
    rng = seeded_rng(1)
    u, v = KeyPair.generate(rng), KeyPair.generate(rng)
    session = b"study-7/round-03"
    seed = pair_seed(u, 3, v.public, 8, session)
    assert seed == pair_seed(v, 8, u.public, 3, session)
    acc = np.full(100, 12345, dtype=np.uint32)
    add_masks(acc, [(seed, pair_sign(3, 8)), (seed, pair_sign(8, 3))])
    assert np.all(acc == 12345)


def test_malformed_masks_are_refused():
    with pytest.raises(ValueError, match="sign of"):
        mask_sum(10, [(bytes(32), 2)], 2)
    with pytest.raises(ValueError, match="32-byte seed"):
        add_masks(np.zeros(4, np.uint32), [(bytes(31), 1)])


def test_short_vectors_are_not_worth_a_thread():
    assert default_workers(1000) == 1
    assert default_workers(10_000_000) >= 1


def test_seeds_may_be_derived_on_the_worker_threads():
    rng = seeded_rng(2)
    seeds = [rng(32) for _ in range(6)]
    derived = [((lambda s=s: s), 1 - 2 * (k % 2)) for k, s in enumerate(seeds)]
    given = [(s, 1 - 2 * (k % 2)) for k, s in enumerate(seeds)]
    for workers in (1, 3):
        assert np.array_equal(mask_sum(900, derived, workers), mask_sum(900, given, 1))


def test_a_failure_on_a_worker_thread_reaches_the_caller():
    def broken() -> bytes:
        raise ProtocolError("key agreement failed: low-order point")

    masks = [(bytes(32), 1), (broken, -1), (bytes(range(32)), 1)]
    for workers in (1, 2, 3):
        with pytest.raises(ProtocolError, match="low-order"):
            mask_sum(100, masks, workers)
    with pytest.raises(ValueError, match="32-byte seed"):
        mask_sum(100, [(lambda: bytes(5), 1)], 2)


def test_long_vectors_use_fewer_threads_rather_than_more_memory(monkeypatch):
    import fedcare.secagg.masks as masks_module

    pools: list[int] = []

    class RecordingPool(ThreadPoolExecutor):
        def __init__(self, max_workers: int, **kwargs) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    rng = seeded_rng(3)
    masks = [(rng(32), 1) for _ in range(5)]
    expected = mask_sum(1000, masks, 1)
    monkeypatch.setattr(masks_module, "ThreadPoolExecutor", RecordingPool)
    monkeypatch.setattr(masks_module, "_PARTIALS_BYTES", 4000)  # room for one partial
    acc = np.zeros(1000, dtype=np.uint32)
    add_masks_threaded(acc, masks, 4)
    assert np.array_equal(acc, expected)
    assert pools == [1]  # one extra thread beside the caller's, not three
