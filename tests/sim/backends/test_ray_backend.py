"""The Ray backend on a real local Ray instance: same model as in process, data loaded
where the tasks run, partial results merged in a tree."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from fedcare.core.records import TrainSpec
from fedcare.sim.backends.ray_backend import RayBackend
from fedcare.sim.backends.recipe import SimulationRecipe

# 7 sites in chunks of 2: four tasks, the last one short, merged in a tree of three.
SMALL = SimulationRecipe(
    dataset="synthetic",
    dataset_params={"num_sites": 7, "samples_per_site": 24, "num_features": 5},
    model="mlp",
    model_params={"hidden": [8]},
    strategy="fedavg",
    spec=TrainSpec(lr=0.1, epochs=1, batch_size=8),
    rounds=2,
    seed=5,
    site_chunk=2,
)

DP = {"noise_multiplier": 0.5, "clip_norm": 0.5, "delta": 1e-5}
SECAGG = {"kind": "secure_aggregation", "value_range": 1.0}
STRATEGIES = [
    pytest.param("fedavg", {}, id="fedavg"),
    pytest.param("fedadam", {"server_lr": 0.03}, id="fedadam"),
    pytest.param("scaffold", {}, id="scaffold"),
    pytest.param("fedavg", {"aggregator": "median"}, id="median"),
    pytest.param("fedavg", {"upload": [{"stage": "topk", "fraction": 0.2}]}, id="topk"),
    pytest.param("ditto", {"ditto_lambda": 0.1}, id="ditto"),
    pytest.param("qfedavg", {"q": 1}, id="qfedavg"),
    pytest.param("fedper", {}, id="fedper"),
    pytest.param("mocha", {"lambda1": 0.1, "lambda2": 0.01}, id="mocha"),
    pytest.param("fedavg", {"dp": DP}, id="dp-central"),
    pytest.param(
        "fedavg", {"dp": {**DP, "adaptive_clip": {"target_quantile": 0.5}}}, id="dp-adaptive-clip"
    ),
    pytest.param("fedavg", {"dp": {**DP, "mode": "local"}}, id="dp-local"),
    pytest.param(
        "fedavg",
        {"dp": {**DP, "mode": "distributed"}, "secure": SECAGG},
        id="dp-distributed-secagg",
    ),
    pytest.param("fedavg", {"secure": SECAGG}, id="secagg"),
    pytest.param(
        "fedavg",
        {"sample_dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}},
        id="dp-sgd",
    ),
    pytest.param("cyclic", {}, id="cyclic"),
]


@pytest.fixture(scope="module")
def backend(ray_instance: str) -> Any:
    with RayBackend() as joined:
        yield joined


def _both(recipe: SimulationRecipe, backend: RayBackend) -> tuple[Any, Any]:
    return recipe.build().run(), recipe.build(backend=backend.for_run(recipe)).run()


@pytest.mark.parametrize(("name", "params"), STRATEGIES)
def test_ray_trains_the_in_process_model(
    name: str, params: dict[str, Any], backend: RayBackend
) -> None:
    recipe = replace(SMALL, strategy=name, strategy_params=params)
    here, there = _both(recipe, backend)
    for a, b in zip(here.final_params, there.final_params, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-6
    assert [r.participants for r in here.history] == [r.participants for r in there.history]
    assert [r.site_upload_bytes for r in here.history] == [
        r.site_upload_bytes for r in there.history
    ]
    assert [r.train_loss for r in here.history] == pytest.approx(
        [r.train_loss for r in there.history]
    )
    # What the privacy accountants spent (client-level DP; each site's DP-SGD steps).
    assert [r.epsilon for r in here.history] == [r.epsilon for r in there.history]
    assert [r.sample_epsilon for r in here.history] == [r.sample_epsilon for r in there.history]
