"""The study runner's backend: each federated run described as settings a worker rebuilds."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.core.errors import ConfigError
from fedcare.sim.backends.choice import BackendChoice
from fedcare.study.config import parse_config
from fedcare.study.runner import StudyRunner
from tests.conftest import make_sites

STUDY = {
    "name": "toy",
    "dataset": {"name": "synthetic", "params": {"num_sites": 4, "samples_per_site": 20}},
    "model": {"name": "logistic"},
    "seeds": [3],
    "rounds": 2,
    "local": {"lr": 0.1, "batch_size": 8},
    "participation": {"fraction": 0.5, "min_sites": 2},
    "simulator": {"site_chunk": 3},
    "attack": {"kind": "sign_flip", "fraction": 0.25},
    "strategies": [
        {"name": "fedprox", "label": "prox", "params": {"mu": 0.1}, "local": {"lr": 0.2}}
    ],
}


def test_the_recipe_carries_every_setting_of_the_run(tmp_path: Path) -> None:
    config = parse_config(STUDY)
    runner = StudyRunner(config, tmp_path)
    recipe = runner.recipe(config.strategies[0], seed=3)
    assert (recipe.dataset, dict(recipe.dataset_params)) == (
        "synthetic",
        {"num_sites": 4, "samples_per_site": 20},
    )
    assert (recipe.strategy, dict(recipe.strategy_params), recipe.strategy_label) == (
        "fedprox",
        {"mu": 0.1},
        "prox",
    )
    assert recipe.spec.lr == 0.2  # the strategy's own local training wins
    assert (recipe.rounds, recipe.seed, recipe.site_chunk) == (2, 3, 3)
    assert (recipe.participation.fraction, recipe.participation.min_sites) == (0.5, 2)
    assert recipe.attack is not None and recipe.attack.kind == "sign_flip"


def test_ray_cannot_load_a_dataset_handed_in_as_an_object(tmp_path: Path) -> None:
    config = parse_config(STUDY)
    runner = StudyRunner(
        config, tmp_path, dataset=make_sites([20, 20]), backend=BackendChoice("ray")
    )
    with pytest.raises(ConfigError, match="cannot be loaded there"):
        runner.run()
