"""Worked example: a third-party package adds an algorithm through an entry point.

The package (here ``tests/algorithms/fedcap_plugin.py``) declares an ``AlgorithmSpec``
and names it in the ``fedcare.algorithms`` entry point group; fedcare finds it when the
registry loads, and ``build_strategy`` and the simulator run it like a built-in strategy.
"""

import numpy as np
import pytest

from fedcare.algorithms import plugin
from fedcare.algorithms.registry import build_strategy, strategy_names
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation


@pytest.fixture
def fedcap_installed(tmp_path, monkeypatch):
    """As if ``pip install fedcap-plugin`` had run: its metadata on the import path."""
    dist = tmp_path / "fedcap_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedcap-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[fedcare.algorithms]\nfedcap = tests.algorithms.fedcap_plugin:SPEC\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    plugin.reload_algorithms()
    yield
    monkeypatch.undo()
    plugin.reload_algorithms()


def distance_moved(dataset, params, rounds=2):
    """How far the global model moves from the (seeded) initial model in ``rounds`` rounds."""

    def final(strategy_params):
        sim = FederatedSimulation(
            module=build_model("mlp", dataset.input_shape, dataset.num_classes, hidden=(8,)),
            dataset=dataset,
            strategy=build_strategy("fedcap", strategy_params),
            spec=TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8),
            rounds=rounds,
            seed=0,
        )
        return sim.run().final_params[0]

    initial = final({"max_step": 0.0})  # every upload capped to nothing: the model never moves
    return float(np.linalg.norm(final(params) - initial))


def test_a_plugin_algorithm_runs_like_a_built_in_one(fedcap_installed, toy_dataset):
    assert "fedcap" in strategy_names()
    assert plugin.algorithms().source("fedcap").startswith("entry point 'fedcap = ")
    strategy = build_strategy("fedcap", {"max_step": 0.02, "server_lr": 1.0}, label="capped")
    assert (strategy.name, strategy.client.max_step) == ("capped", 0.02)
    # Two rounds of steps of at most 0.02 each; uncapped, the model moves much further.
    assert distance_moved(toy_dataset, {"max_step": 0.02}) <= 2 * 0.02 * (1 + 1e-5)
    assert distance_moved(toy_dataset, {"max_step": 100.0}) > 0.1


def test_a_plugins_parameters_are_checked_like_built_in_ones(fedcap_installed):
    with pytest.raises(ConfigError, match="'max_step' only applies to fedcap"):
        build_strategy("fedavg", {"max_step": 0.1})
    with pytest.raises(
        ConfigError,
        match=r"strategy 'fedcap': parameter 'max_step': .* greater than or equal to 0, found -1",
    ):
        build_strategy("fedcap", {"max_step": -1})
    with pytest.raises(ConfigError, match="'mu' only applies to fedprox"):
        build_strategy("fedcap", {"mu": 0.1})


def test_without_the_plugin_the_name_is_unknown():
    with pytest.raises(ConfigError, match="unknown strategy 'fedcap'"):
        build_strategy("fedcap")
