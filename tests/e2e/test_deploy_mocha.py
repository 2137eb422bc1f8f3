"""MOCHA deployed over mTLS: the coordinator keeps every site's model, even across kill -9.

Real processes through the ``fedcare`` CLI. Each round every hospital receives only its own
model and objective, trains its personal model and returns it beside its update; the
coordinator's checkpoint carries all of them, so a coordinator killed mid-run and resumed
ends with the simulator's global model and the simulator's per-site models.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from fedcare.algorithms.mocha import MODELS
from fedcare.algorithms.registry import build_strategy
from fedcare.data.registry import load_dataset
from fedcare.models.registry import build_model
from fedcare.net.store import RunStore
from fedcare.runtime.checkpoint import load_checkpoint
from fedcare.sim.engine import FederatedSimulation
from tests.e2e import test_deploy
from tests.e2e.test_deploy import SITES, Deployment

pytestmark = pytest.mark.slow
deployment = test_deploy.deployment  # the study folder, CA and bundles fixture

MOCHA_STRATEGY = "  - name: mocha\n    params: {lambda1: 0.1, lambda2: 0.01}\n"


@pytest.mark.parametrize("deployment", [4], indirect=True)
def test_mocha_study_survives_kill_9_of_the_coordinator_and_matches_the_simulator(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.study.write_text(dep.study.read_text().replace("  - name: fedavg\n", MOCHA_STRATEGY))
    dep.approve_everywhere()
    coordinator, port = dep.coordinator(
        "--run-id", "mocha-run", "--start-grace", "300", "--round-timeout", "120"
    )
    for site in SITES:
        dep.site(site, port)
    dep.wait_log("coordinator", "round 2 done")
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    resumed, _ = dep.coordinator(resume="mocha-run", port=port)
    assert resumed.wait(timeout=150) == 0, dep.log("coordinator").read_text()
    assert "resuming run mocha-run after round" in dep.log("coordinator").read_text()

    plan = dep.plan()
    dataset = load_dataset("heart-disease")
    sim = FederatedSimulation(
        module=build_model(plan.model, dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy(plan.strategy, plan.strategy_params),
        spec=plan.spec,
        rounds=plan.rounds,
        seed=plan.seed,
    ).run()
    np.testing.assert_allclose(dep.final_model("mocha-run"), sim.state.params, atol=1e-6)
    saved = load_checkpoint(Path(dep.out / "deploy" / "mocha-run"))
    assert saved.state.round == plan.rounds
    np.testing.assert_allclose(saved.state.arrays[MODELS], sim.state.arrays[MODELS], atol=1e-6)
    with RunStore.in_folder(dep.out) as store:
        rounds = store.rounds("mocha-run")
        assert [r.round for r in rounds] == list(range(plan.rounds))
        assert all(sorted(r.by_status("contributed")) == sorted(SITES) for r in rounds)
