"""A run described by its settings: what a Ray worker rebuilds, once per process."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedcare.core.records import TrainSpec
from fedcare.sim.backends import recipe as recipes
from fedcare.sim.backends.recipe import SimulationRecipe, worker_simulation

SMALL = SimulationRecipe(
    dataset="synthetic",
    dataset_params={"num_sites": 6, "samples_per_site": 20, "num_features": 5},
    model="logistic",
    strategy="fedavg",
    spec=TrainSpec(lr=0.1, epochs=1, batch_size=8),
    rounds=2,
    seed=3,
    site_chunk=4,
)


def test_the_recipe_builds_the_run_it_describes() -> None:
    simulation = SMALL.build()
    assert simulation.names == [f"site{k:04d}" for k in range(6)]
    assert simulation.rounds == 2
    assert simulation.site_chunk == 4
    assert simulation.strategy.name == "fedavg"


def test_two_builds_of_one_recipe_train_to_the_same_model() -> None:
    first, second = SMALL.build().run(), SMALL.build().run()
    np.testing.assert_array_equal(first.final_params[0], second.final_params[0])


def test_the_digest_follows_every_setting() -> None:
    assert SMALL.digest() == replace(SMALL).digest()
    assert SMALL.digest() != replace(SMALL, seed=4).digest()
    assert SMALL.digest() != replace(SMALL, strategy_params={"weighting": "uniform"}).digest()
    # ... while the data's key follows the dataset alone.
    assert SMALL.data_digest() == replace(SMALL, strategy="fedprox").data_digest()


def test_a_worker_builds_a_run_once_and_shares_its_data_between_runs() -> None:
    first = worker_simulation(SMALL)
    assert worker_simulation(SMALL) is first
    other = worker_simulation(replace(SMALL, strategy="fedprox", strategy_params={"mu": 0.1}))
    assert other is not first
    assert other.dataset is first.dataset  # loaded once for both runs


def test_the_worker_cache_keeps_only_the_latest_runs() -> None:
    for seed in range(recipes.CACHE_SIZE + 2):
        worker_simulation(replace(SMALL, seed=seed))
    assert recipes.cached_runs() == recipes.CACHE_SIZE
