import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy, strategy_names
from fedcare.algorithms.scaffold import SERVER_CONTROL, SITE_CONTROL, UPLOAD_CONTROL_DELTA
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalOutcome, TrainSpec

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)


def outcome(params: list[float], n: int = 10, steps: int = 5) -> LocalOutcome:
    return LocalOutcome(np.array(params, dtype=np.float32), n, steps, 0.0)


def run_round(name: str, results: list[LocalOutcome], params=None):
    strategy = build_strategy(name)
    state = strategy.init_state(np.zeros(2, dtype=np.float32) if params is None else params)
    acc = strategy.new_accumulator(state)
    site_states = []
    for out in results:
        site_state, update = strategy.client_update(state, {}, out, strategy.local_spec(SPEC))
        site_states.append(site_state)
        acc.add(update.delta, update.weight, update.extras)
    return strategy, strategy.server_update(state, acc.result(), num_sites=4), site_states


def test_fedavg_round_is_the_sample_weighted_mean_of_site_models():
    _, state, _ = run_round("fedavg", [outcome([1.0, 0.0], n=10), outcome([0.0, 4.0], n=30)])
    np.testing.assert_allclose(state.params, [0.25, 3.0])
    assert state.round == 1


def test_fedprox_asks_sites_for_a_proximal_term_to_the_global_model():
    strategy = build_strategy("fedprox", {"mu": 0.5})
    state = strategy.init_state(np.ones(3, dtype=np.float32))
    objective = strategy.objective(state, {})
    assert objective.prox_mu == 0.5
    np.testing.assert_array_equal(objective.anchor, state.params)


def test_scaffold_updates_site_and_server_control_variates():
    # One site of four took 5 steps of lr 0.1 and moved by delta = [-1, 0.5].
    strategy, state, site_states = run_round("scaffold", [outcome([-1.0, 0.5], steps=5)])
    c_i = site_states[0][SITE_CONTROL]
    # c_i+ = c_i - c - delta / (K lr) = -[-1, 0.5] / 0.5
    np.testing.assert_allclose(c_i, [2.0, -1.0])
    # c += |S|/N * mean(dc) = 1/4 * [2, -1]
    np.testing.assert_allclose(state.arrays[SERVER_CONTROL], [0.5, -0.25])
    objective = strategy.objective(state, site_states[0])
    np.testing.assert_allclose(objective.correction, [0.5 - 2.0, -0.25 + 1.0])


def test_scaffold_uploads_its_control_delta():
    strategy = build_strategy("scaffold")
    state = strategy.init_state(np.zeros(2, dtype=np.float32))
    _, update = strategy.client_update(state, {}, outcome([-1.0, 0.5]), SPEC)
    assert UPLOAD_CONTROL_DELTA in update.extras


def test_scaffold_refuses_adam_locally():
    with pytest.raises(ConfigError, match="plain local SGD"):
        build_strategy("scaffold").local_spec(TrainSpec(optimizer="adam", lr=0.01))


def test_fedsgd_takes_one_full_batch_gradient_step():
    spec = build_strategy("fedsgd").local_spec(SPEC)
    assert spec.steps == 1 and spec.batch_size is None and spec.lr == 1.0


def test_fedadam_is_fedavg_plus_adam_on_the_server():
    strategy = build_strategy("fedadam", {"server_lr": 0.05})
    assert strategy.client.name == "fedavg"
    assert strategy.server_optimizer.name == "adam" and strategy.server_optimizer.lr == 0.05


def test_download_counts_broadcast_arrays_but_not_server_moments():
    adam = build_strategy("fedadam")
    state = adam.init_state(np.zeros(10, dtype=np.float32))
    assert adam.download_nbytes(state) == 40
    scaffold = build_strategy("scaffold")
    assert scaffold.download_nbytes(scaffold.init_state(np.zeros(10, dtype=np.float32))) == 80


def test_unknown_names_and_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="known strategies"):
        build_strategy("fedavgg")
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_strategy("fedavg", {"lr": 1})
    with pytest.raises(ConfigError, match="only applies to fedprox"):
        build_strategy("fedavg", {"mu": 0.1})
    assert {"fedavg", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "scaffold", "cyclic"} <= set(
        strategy_names()
    )
