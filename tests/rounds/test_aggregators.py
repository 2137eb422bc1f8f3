"""The round's aggregation objects: any split of the sites, any chunking of an update,
gives the result one aggregator fed everything would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.core.records import ClientUpdate
from fedcare.core.seeds import SeedStream
from fedcare.privacy.client_level import PrivateRounds
from fedcare.privacy.spec import parse_dp
from fedcare.rounds import (
    AggregationServices,
    MeanAggregator,
    PrivateAggregator,
    RobustAggregator,
    SecureSumAggregator,
    new_aggregator,
)
from fedcare.sim.secure_sum import SecAggSummer
from fedcare.transforms.secure import parse_secure

SIZE = 7


def updates(count: int, seed: int = 0, integer: bool = True) -> list[ClientUpdate]:
    """Integer-valued deltas and weights: float64 sums of them are exact in any order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        delta = rng.integers(-8, 9, SIZE) if integer else rng.normal(size=SIZE)
        extras = {"control": rng.integers(-4, 5, 3).astype(np.float32)}
        out.append(ClientUpdate(delta.astype(np.float32), float(rng.integers(1, 50)), extras))
    return out


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.aggregate.delta, b.aggregate.delta)
    assert a.aggregate.extras.keys() == b.aggregate.extras.keys()
    for key in a.aggregate.extras:
        np.testing.assert_array_equal(a.aggregate.extras[key], b.aggregate.extras[key])
    assert (a.aggregate.total_weight, a.aggregate.count) == (
        b.aggregate.total_weight,
        b.aggregate.count,
    )


def fed(aggregator, batch, first_site: int = 0):
    for site, update in enumerate(batch, start=first_site):
        aggregator.add(update, site)
    return aggregator


@given(count=st.integers(2, 12), cut=st.integers(1, 11), seed=st.integers(0, 99))
def test_mean_of_merged_partials_equals_one_mean_of_everything(count, cut, seed):
    batch = updates(count, seed)
    cut = min(cut, count - 1)
    whole = fed(MeanAggregator(SIZE), batch)
    left = fed(MeanAggregator(SIZE), batch[:cut])
    right = fed(left.empty(), batch[cut:], first_site=cut)
    left.merge(right)
    assert_same(left.result(), whole.result())


@given(pieces=st.lists(st.integers(1, SIZE), min_size=1, max_size=SIZE), seed=st.integers(0, 99))
def test_an_update_added_chunk_by_chunk_equals_the_update_added_whole(pieces, seed):
    batch = updates(3, seed, integer=False)
    whole = fed(MeanAggregator(SIZE), batch)
    chunked = MeanAggregator(SIZE)
    for site, update in enumerate(batch):
        sink = chunked.open(site, update.weight, update.extras)
        offset = 0
        for width in [*pieces, SIZE]:  # the last piece takes whatever is left
            stop = min(offset + width, SIZE)
            if stop > offset:
                sink.add_chunk(offset, update.delta[offset:stop])
            offset = stop
        sink.commit()
    assert_same(chunked.result(), whole.result())


def test_an_update_arriving_out_of_order_or_incomplete_is_refused():
    sink = MeanAggregator(SIZE).open(0, 1.0)
    sink.add_chunk(0, np.zeros(3, np.float32))
    with pytest.raises(ProtocolError, match="expected the next chunk at offset 3"):
        sink.add_chunk(4, np.zeros(3, np.float32))
    with pytest.raises(ProtocolError, match="ended after 3 of its 7 values"):
        sink.commit()


def test_robust_rule_over_merged_partials_equals_the_rule_over_every_update():
    rule = build_strategy("fedavg", {"aggregator": "median"}).robust_rule()
    assert rule is not None
    batch = updates(9, seed=3)
    whole = fed(RobustAggregator(SIZE, rule), batch)
    parts = [fed(RobustAggregator(SIZE, rule), batch[i : i + 3], i) for i in (0, 3, 6)]
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert_same(parts[0].result(), whole.result())
    median = np.median(np.stack([u.delta for u in batch]), axis=0)
    np.testing.assert_array_equal(whole.result().aggregate.delta, median)


def private_rounds(mode: str) -> PrivateRounds:
    spec = parse_dp({"mode": mode, "noise_multiplier": 0.8, "clip_norm": 2.0}, where="test")
    return PrivateRounds(spec, num_sites=6, sampling_rate=1.0, rounds=3, seeds=SeedStream(5))


@pytest.mark.parametrize("mode", ["central", "local"])
def test_dp_aggregate_is_the_release_private_rounds_gives(mode):
    """Same clipping, same noise, same accountant as the accumulate-then-release path."""
    batch = updates(6, seed=1, integer=False)
    reference = private_rounds(mode)
    reference.start_round(1, SIZE)
    for update in batch:
        reference.add(update.delta)
    expected = reference.release(1)

    privacy = private_rounds(mode)
    strategy = build_strategy("fedavg", {"dp": {"mode": mode, "noise_multiplier": 0.8}})
    aggregator = new_aggregator(
        strategy, SIZE, round_index=1, cohort=6, services=AggregationServices(privacy)
    )
    assert isinstance(aggregator, PrivateAggregator)
    fed(aggregator, batch[:4])
    aggregator.merge(fed(aggregator.empty(), batch[4:], first_site=4))
    result = aggregator.result().aggregate
    np.testing.assert_array_equal(result.delta, expected)
    assert (result.count, result.total_weight) == (6, 6.0)
    assert privacy.epsilon() == reference.epsilon()


def test_secure_sum_of_merged_partials_is_the_weighted_mean_and_counts_masked_bytes():
    spec = parse_secure({"kind": "secure_aggregation", "value_range": 64.0})
    batch = updates(5, seed=2)
    aggregator = SecureSumAggregator(SIZE, SecAggSummer(spec, 0), 1, 5, weight_scale=50.0)
    fed(aggregator, batch[:2])
    aggregator.merge(fed(aggregator.empty(), batch[2:], first_site=2))
    result = aggregator.result()
    expected = MeanAggregator(SIZE)
    fed(expected, batch)
    np.testing.assert_allclose(result.aggregate.delta, expected.result().aggregate.delta, atol=1e-3)
    assert result.upload_bytes == dict.fromkeys(range(5), 4 * (SIZE + 1) + 64)


def test_a_site_is_in_a_secure_sum_once():
    spec = parse_secure("secure_aggregation")
    aggregator = SecureSumAggregator(SIZE, SecAggSummer(spec, 0), 1, 2, weight_scale=1.0)
    aggregator.add(updates(1)[0], 3)
    other = aggregator.empty()
    other.add(updates(1)[0], 3)
    with pytest.raises(ProtocolError, match="site 3"):
        aggregator.add(updates(1)[0], 3)
    with pytest.raises(ProtocolError, match="site 3 is in both"):
        aggregator.merge(other)


def test_the_strategy_declarations_choose_the_aggregator():
    def build(params, services=None):
        return new_aggregator(
            build_strategy("fedavg", params), SIZE, round_index=1, cohort=2, services=services
        )

    assert isinstance(build({}), MeanAggregator)
    robust = build({"aggregator": "krum", "aggregator_params": {"f": 1}})
    assert isinstance(robust, RobustAggregator)
    assert isinstance(build({"secure": "secure_aggregation"}), SecureSumAggregator)
    with pytest.raises(ConfigError, match="client-level DP is on but the driver did not lend"):
        build({"dp": {"mode": "central", "noise_multiplier": 1.0}})


def test_partials_of_different_kinds_do_not_merge():
    rule = build_strategy("fedavg", {"aggregator": "median"}).robust_rule()
    assert rule is not None
    with pytest.raises(TypeError, match="cannot merge a RobustAggregator into a MeanAggregator"):
        MeanAggregator(SIZE).merge(RobustAggregator(SIZE, rule))
