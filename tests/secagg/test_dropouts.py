"""The central property: the unmasked sum is exact for every dropout pattern the threshold
allows, and the server refuses (ProtocolError) rather than output a wrong sum otherwise."""

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.secagg import SecAggConfig, SecAggServer, Stage, simulate
from tests.secagg.harness import make_config, quantised_sum, random_vectors, seeded_rng

STAGES = list(Stage)


def included_clients(config: SecAggConfig, drops: dict[Stage, set[int]]) -> set[int]:
    """Clients whose masked input reached the server: not dropped before unmasking."""
    gone = set().union(*(drops.get(s, set()) for s in STAGES[:3]))
    return set(config.client_ids) - gone


def recoverable(config: SecAggConfig, drops: dict[Stage, set[int]]) -> bool:
    """Oracle: every stage keeps the floor and every needed secret keeps t live holders."""
    alive = set(config.client_ids)
    sizes = []
    for stage in STAGES:
        alive -= drops.get(stage, set())
        sizes.append(len(alive))
    shared = set(config.client_ids) - drops.get(Stage.ADVERTISE_KEYS, set())
    shared -= drops.get(Stage.SHARE_KEYS, set())
    graph, t = config.graph, config.threshold
    return min(sizes) >= config.survivor_floor and all(
        len(graph.holders(u) & alive) >= t for u in shared
    )


@st.composite
def scenarios(draw, *, degree: bool, max_drops: str):
    n = draw(st.integers(3, 10))
    k = None
    if degree:
        k = draw(st.sampled_from([d for d in (2, 4, 6) if d < n - 1] or [None]))
    holders = n if k is None else k + 1
    t = draw(st.integers(holders // 2 + 1, holders))
    config = make_config(n, t, degree=k, length=draw(st.integers(1, 24)))
    if max_drops == "within":
        count = draw(st.integers(0, n - config.survivor_floor))
    elif max_drops == "beyond":
        count = draw(st.integers(n - config.survivor_floor + 1, n))
    else:
        count = draw(st.integers(0, n))
    dropped = draw(st.permutations(range(n)))[:count]
    drops: dict[Stage, set[int]] = {}
    for c in dropped:
        drops.setdefault(draw(st.sampled_from(STAGES)), set()).add(c)
    return config, drops, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(scenarios(degree=False, max_drops="within"))
def test_masked_sum_equals_plain_sum_with_up_to_n_minus_t_dropouts(scenario):
    config, drops, seed = scenario
    vectors = random_vectors(config, seed)
    result = simulate(config, vectors, drops, rng=seeded_rng(seed)).result
    included = included_clients(config, drops)
    expected = quantised_sum(config, vectors, included)
    assert result.included == included
    assert np.array_equal(result.ring_total, expected)
    assert np.array_equal(result.total, config.ring.decode_sum(expected, len(included)))
    plain = sum((np.clip(vectors[c], -1.5, 1.5) for c in included), np.zeros(config.vector_length))
    assert np.allclose(result.total, plain, atol=len(included) * config.ring.resolution)


@settings(max_examples=25, deadline=None)
@given(scenarios(degree=False, max_drops="beyond"))
def test_more_than_n_minus_t_dropouts_raise_instead_of_a_wrong_sum(scenario):
    config, drops, seed = scenario
    with pytest.raises(ProtocolError):
        simulate(config, random_vectors(config, seed), drops, rng=seeded_rng(seed))


@settings(max_examples=40, deadline=None)
@given(scenarios(degree=True, max_drops="any"))
def test_secagg_plus_sum_is_exact_whenever_each_neighbourhood_keeps_t_holders(scenario):
    config, drops, seed = scenario
    vectors = random_vectors(config, seed)
    event("recoverable" if recoverable(config, drops) else "too many dropped nearby")
    if not recoverable(config, drops):
        with pytest.raises(ProtocolError):
            simulate(config, vectors, drops, rng=seeded_rng(seed))
        return
    result = simulate(config, vectors, drops, rng=seeded_rng(seed)).result
    included = included_clients(config, drops)
    assert result.included == included
    assert np.array_equal(result.ring_total, quantised_sum(config, vectors, included))


def test_expensive_case_sites_dropping_after_sharing_keys_on_a_secagg_plus_graph():
    # 20 sites, 6 neighbours each; 2 vanish after ShareKeys, so the server must rebuild
    # their masking keys from their neighbours' shares and strip the pair masks.
    config = make_config(20, 5, degree=6, length=1000)
    vectors = random_vectors(config, 1)
    drops = {Stage.MASKED_INPUT: {3, 11}}
    result = simulate(config, vectors, drops, rng=seeded_rng(1)).result
    assert result.included == set(range(20)) - {3, 11}
    assert np.array_equal(result.ring_total, quantised_sum(config, vectors, result.included))


def test_the_server_sum_is_the_same_on_any_number_of_threads():
    config = make_config(12, 3, degree=4, length=3000)
    vectors = random_vectors(config, 2)
    drops = {Stage.MASKED_INPUT: {0, 9}, Stage.UNMASKING: {2}}  # 2's input is in the sum
    expected = quantised_sum(config, vectors, set(range(12)) - {0, 9})
    for workers in (1, 3):
        result = simulate(config, vectors, drops, seeded_rng(2), server_workers=workers).result
        assert np.array_equal(result.ring_total, expected)
    with pytest.raises(ConfigError, match="at least 1 worker"):
        SecAggServer(config, workers=0)


@settings(max_examples=15, deadline=None)
@given(scenarios(degree=True, max_drops="within"))
def test_late_inputs_give_the_same_sum_and_time_each_sites_last_step(scenario):
    config, drops, seed = scenario
    if not recoverable(config, drops):
        return
    vectors = random_vectors(config, seed)
    outcome = simulate(config, vectors, drops, rng=seeded_rng(seed), late_inputs=True)
    included = included_clients(config, drops)
    assert np.array_equal(outcome.result.ring_total, quantised_sum(config, vectors, included))
    assert set(outcome.online) == included
    assert outcome.critical_path >= outcome.offline_path
    assert outcome.critical_path >= outcome.online_path
