"""Sample-level DP-SGD in a deployed heart study: four site machines and a coordinator, no
network. Sites that draw their DP-SGD batches and noise from the plan's seed reach the
simulator's model; every update carries the site's epsilon so far, the simulator's number.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.data.heart import load_heart_disease
from fedcare.net.site_training import SAMPLE_EPSILON, site_training
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import CoordinatorMachine, CoordinatorOptions
from fedcare.runtime.messages import UpdateMessage
from fedcare.runtime.site import DataCheck, SiteMachine
from tests.runtime.test_protocol_study import Loopback, heart_plan, simulate, start_params

SAMPLE_DP = {"noise_multiplier": 1.2, "clip_norm": 1.0}


class Recording(Loopback):
    """The loopback, also keeping each update's metrics as the coordinator receives them."""

    def __init__(self, coordinator, sites) -> None:
        super().__init__(coordinator, sites)
        self.metrics: dict[tuple[int, str], dict[str, float]] = {}

    def step(self) -> None:
        direction, name, env = self.queue[0]
        if direction == "coordinator" and env.kind == UpdateMessage.KIND:
            self.metrics[(env.round, name)] = UpdateMessage.from_envelope(env).metrics
        super().step()


def deploy(dataset, plan, tmp_path, sample_noise) -> Recording:
    coordinator = CoordinatorMachine(
        "run-1", plan, start_params(dataset, plan), options=CoordinatorOptions()
    )
    sites = {}
    for site in dataset.sites:
        store = ApprovalStore(tmp_path / site.name / "approvals.json")
        store.approve(plan.hash, by=f"data owner of {site.name}")
        check = DataCheck(True, {"num_train": site.num_train, "num_test": site.num_test})
        work = site_training(site, sample_noise=sample_noise)
        sites[site.name] = SiteMachine(site.name, store, check, work, coordinator="coordinator")
    net = Recording(coordinator, sites)
    for name in dataset.site_names:
        net.connect(name)
    net.run()
    assert net.coordinator.phase.value == "finished"
    return net


@pytest.fixture(scope="module")
def heart():
    return load_heart_disease()


@pytest.mark.parametrize(
    ("strategy", "params"),
    [("fedavg", {}), ("fedprox", {"mu": 0.1}), ("scaffold", {})],
)
def test_plan_seeded_dp_sgd_sites_reach_the_simulators_model_and_epsilon(
    heart, tmp_path, strategy, params
):
    plan = heart_plan(heart, strategy, {**params, "sample_dp": SAMPLE_DP})
    net = deploy(heart, plan, tmp_path, sample_noise="plan")
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    assert len(net.metrics) == plan.rounds * len(heart.site_names)
    for record in sim.history:
        for site in record.participants:
            sent = net.metrics[(record.round - 1, site)][SAMPLE_EPSILON]
            assert sent == pytest.approx(record.sample_epsilon[site], rel=1e-12)
    # The coordinator's history (and so metrics.json and the report) has them per round.
    for deployed, simulated in zip(net.coordinator.history, sim.history, strict=True):
        assert deployed[SAMPLE_EPSILON] == pytest.approx(simulated.sample_epsilon, rel=1e-12)


def test_sample_epsilon_reaches_the_coordinator_under_secure_aggregation(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", {"sample_dp": SAMPLE_DP, "secure": "secure_aggregation"})
    net = deploy(heart, plan, tmp_path, sample_noise="plan")
    sim = simulate(heart, plan)
    assert net.coordinator.history[-1][SAMPLE_EPSILON] == pytest.approx(
        sim.history[-1].sample_epsilon, rel=1e-12
    )
    state, extra = net.coordinator.checkpoint()  # kept across a coordinator restart
    restored = CoordinatorMachine.restore(plan, state, extra)
    assert restored.sample_epsilon == net.coordinator.sample_epsilon


def test_sites_keep_their_dp_sgd_randomness_secret_by_default(heart, tmp_path):
    """CSPRNG batches and noise: a different model from the simulator's, the same epsilon."""
    plan = heart_plan(heart, "fedavg", {"sample_dp": SAMPLE_DP})
    net = deploy(heart, plan, tmp_path, sample_noise="secret")
    sim = simulate(heart, plan)
    assert not np.allclose(net.coordinator.final_params, sim.state.params, atol=1e-3)
    last = sim.history[-1]
    for site in heart.site_names:
        sent = net.metrics[(plan.rounds - 1, site)][SAMPLE_EPSILON]
        assert sent == pytest.approx(last.sample_epsilon[site], rel=1e-12)
