import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalOutcome, TrainSpec

SPEC = TrainSpec(optimizer="sgd", lr=0.5)


def one_round(q: float, outcomes: list[LocalOutcome]) -> np.ndarray:
    strategy = build_strategy("qfedavg", {"q": q})
    state = strategy.init_state(np.zeros(2, dtype=np.float32))
    acc = strategy.new_accumulator(state)
    for out in outcomes:
        _, update = strategy.client_update(state, {}, out, SPEC)
        acc.add(update.delta, update.weight, update.extras)
    return strategy.server_update(state, acc.result(), 2).params


def test_q_zero_is_uniform_fedavg():
    outcomes = [
        LocalOutcome(np.array([1.0, 0.0], np.float32), 10, 3, 0.0, start_loss=0.2),
        LocalOutcome(np.array([0.0, 3.0], np.float32), 90, 3, 0.0, start_loss=0.9),
    ]
    np.testing.assert_allclose(one_round(0.0, outcomes), [0.5, 1.5], rtol=1e-6)


def test_q_one_matches_the_paper_by_hand():
    w1, w2 = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    f1, f2, lip = 0.2, 0.9, 1 / 0.5
    outcomes = [
        LocalOutcome(w1.astype(np.float32), 10, 3, 0.0, start_loss=f1),
        LocalOutcome(w2.astype(np.float32), 90, 3, 0.0, start_loss=f2),
    ]
    dw = [lip * (0 - w1), lip * (0 - w2)]
    deltas = [f1 * dw[0], f2 * dw[1]]
    hs = [np.dot(dw[0], dw[0]) + lip * f1, np.dot(dw[1], dw[1]) + lip * f2]
    expected = -(deltas[0] + deltas[1]) / (hs[0] + hs[1])
    np.testing.assert_allclose(one_round(1.0, outcomes), expected, rtol=1e-5)


def test_higher_loss_sites_pull_harder_as_q_grows():
    outcomes = [
        LocalOutcome(np.array([1.0, 0.0], np.float32), 50, 3, 0.0, start_loss=0.1),
        LocalOutcome(np.array([0.0, 1.0], np.float32), 50, 3, 0.0, start_loss=2.0),
    ]
    low, high = one_round(0.0, outcomes), one_round(3.0, outcomes)
    assert high[1] / high[0] > low[1] / low[0]


def test_q_must_be_non_negative_and_only_for_qfedavg():
    with pytest.raises(ConfigError, match="q must be"):
        build_strategy("qfedavg", {"q": -1})
    with pytest.raises(ConfigError, match="only applies to qfedavg"):
        build_strategy("fedavg", {"q": 1})
