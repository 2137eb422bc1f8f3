"""The coordinator's server step may spend the round's mean: the new model is written over
it. Same run state, bit for bit, for every server optimizer and for a rule with arrays of
its own (SCAFFOLD reads the aggregate's extras)."""

import numpy as np
import pytest

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.registry import build_strategy
from fedcare.algorithms.scaffold import UPLOAD_CONTROL_DELTA
from fedcare.rounds.server_step import server_step

SIZE = 70_001


def aggregate(rng: np.random.Generator, extras: dict[str, np.ndarray]) -> Aggregate:
    delta = rng.normal(scale=0.1, size=SIZE).astype(np.float32)
    return Aggregate(delta=delta, extras=extras, total_weight=30.0, count=3)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_spent_step_reaches_the_same_state(name):
    strategy = build_strategy(name)
    rng = np.random.default_rng(3)
    state = strategy.init_state(rng.normal(size=SIZE).astype(np.float32))
    for _ in range(2):  # moments that moved away from their initial values
        agg = aggregate(rng, {})
        kept = server_step(strategy, state, Aggregate(agg.delta.copy(), {}, 30.0, 3), 4)
        spent = server_step(strategy, state, agg, 4, spend=True)
        assert spent.params is agg.delta  # the mean's memory became the new model
        assert spent.params.tobytes() == kept.params.tobytes()
        assert sorted(spent.arrays) == sorted(kept.arrays)
        for key, value in kept.arrays.items():
            assert spent.arrays[key].tobytes() == value.tobytes(), key
        assert spent.round == kept.round == state.round + 1
        state = spent


def test_a_spent_step_keeps_the_rules_own_arrays():
    strategy = build_strategy("scaffold")
    rng = np.random.default_rng(5)
    state = strategy.init_state(rng.normal(size=SIZE).astype(np.float32))
    (control,) = [k for k in state.arrays if not k.startswith("opt/")]
    extras = {UPLOAD_CONTROL_DELTA: rng.normal(size=SIZE).astype(np.float32)}
    agg = aggregate(rng, dict(extras))
    kept = server_step(strategy, state, Aggregate(agg.delta.copy(), dict(extras), 30.0, 3), 4)
    old_params = state.params.copy()
    spent = server_step(strategy, state, agg, 4, spend=True)
    assert spent.arrays[control].tobytes() == kept.arrays[control].tobytes()
    assert spent.params.tobytes() == kept.params.tobytes()
    assert np.array_equal(state.params, old_params)  # the old state is left as it was
