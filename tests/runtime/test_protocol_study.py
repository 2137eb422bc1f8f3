"""A whole heart study driven through the coordinator and four site machines, no network.

Messages travel as Envelopes through an in-memory loopback that stamps the sender the way
the TLS transport does. With every site answering, the deployed protocol must reach the
simulator's model (same sampling, seeds and maths) within 1e-6.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.data.heart import load_heart_disease
from fedcare.models import build_model
from fedcare.net.site_training import site_training
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import CoordinatorMachine, CoordinatorOptions
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.sampling import Participation
from fedcare.runtime.site import DataCheck, SiteMachine
from fedcare.sim.engine import FederatedSimulation, initial_params

SPEC = TrainSpec(optimizer="sgd", lr=0.02, epochs=1, batch_size=16)
ROUNDS = 3


class Loopback:
    """Delivers envelopes between the machines in order, like one stream per site."""

    def __init__(self, coordinator: CoordinatorMachine, sites: dict[str, SiteMachine]) -> None:
        self.coordinator = coordinator
        self.sites = sites
        self.queue: deque = deque()
        self.now = 0.0
        self.delivered = 0

    def connect(self, name: str) -> None:
        self.coordinator.site_connected(name, self.now)
        for env in self.sites[name].start(self.now):
            self.queue.append(("coordinator", name, env))

    def disconnect(self, name: str) -> None:
        self.queue = deque(m for m in self.queue if m[1] != name)
        self._to_sites(self.coordinator.site_disconnected(name, self.now))

    def _to_sites(self, outgoing) -> None:
        self.queue.extend(("site", o.recipient, o.envelope) for o in outgoing)

    def step(self) -> None:
        direction, name, env = self.queue.popleft()
        self.delivered += 1
        if direction == "coordinator":
            self._to_sites(self.coordinator.handle(env.from_peer(name), self.now))
        else:
            replies = self.sites[name].handle(env.from_peer("coordinator"), self.now)
            self.queue.extend(("coordinator", name, r) for r in replies)

    def run(self, max_steps: int = 10_000, stop=None) -> None:
        for _ in range(max_steps):
            if not self.queue or (stop is not None and stop()):
                return
            self.step()

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self._to_sites(self.coordinator.tick(self.now))
        for name, site in self.sites.items():
            self.queue.extend(("coordinator", name, r) for r in site.tick(self.now))


@pytest.fixture(scope="module")
def heart():
    return load_heart_disease()


def heart_plan(dataset, strategy, params=None, rounds=ROUNDS, seed=0, **kwargs) -> RunPlan:
    return RunPlan(
        sites=tuple(dataset.site_names),
        strategy=strategy,
        strategy_params=dict(params or {}),
        spec=SPEC,
        rounds=rounds,
        seed=seed,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        study="heart-deploy",
        dataset=dataset.name,
        **kwargs,
    )


def start_params(dataset, plan: RunPlan) -> np.ndarray:
    module = build_model(plan.model, dataset.input_shape, dataset.num_classes, **plan.model_params)
    return initial_params(module, SeedStream(plan.seed))


def deploy(
    dataset,
    plan: RunPlan,
    tmp_path: Path,
    options=None,
    approve=True,
    noise_seed="plan",
    run_id="run-1",
) -> Loopback:
    """A coordinator and one site machine per hospital, each with its own approval store.

    ``noise_seed="plan"`` keys the coordinator's DP noise by the plan's seed, as the
    simulator does (a real coordinator keeps a secret one; None draws it).
    """
    coordinator = CoordinatorMachine(
        run_id,
        plan,
        start_params(dataset, plan),
        options=options or CoordinatorOptions(),
        noise_seed=plan.seed if noise_seed == "plan" else noise_seed,
    )
    sites = {}
    for site in dataset.sites:
        store = ApprovalStore(tmp_path / site.name / "approvals.json")
        if approve:
            store.approve(plan.hash, by=f"data owner of {site.name}")
        check = DataCheck(True, {"num_train": site.num_train, "num_test": site.num_test})
        sites[site.name] = SiteMachine(
            site.name, store, check, site_training(site), coordinator="coordinator"
        )
    return Loopback(coordinator, sites)


def simulate(dataset, plan: RunPlan):
    module = build_model(plan.model, dataset.input_shape, dataset.num_classes, **plan.model_params)
    return FederatedSimulation(
        module=module,
        dataset=dataset,
        strategy=build_strategy(plan.strategy, plan.strategy_params),
        spec=plan.spec,
        rounds=plan.rounds,
        seed=plan.seed,
        participation=plan.participation,
    ).run()


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("fedavg", {}),
        ("fedadam", {"server_lr": 0.03, "weighting": "uniform"}),
        ("scaffold", {}),
        ("qfedavg", {"q": 5.0, "server_lr": 3.0}),  # sites report their loss at the start
        ("fedavg", {"aggregator": "median"}),  # robust rule over every update at once
        ("ditto", {}),  # personal models trained and kept at the sites
        ("fedavg", {"upload": [{"stage": "clip", "max_norm": 0.05}, {"stage": "quantize"}]}),
        ("scaffold", {"upload": [{"stage": "topk", "fraction": 0.2}]}),  # residual at the site
    ],
    ids=["fedavg", "fedadam", "scaffold", "qfedavg", "median", "ditto", "clip-quantize", "topk"],
)
def test_deployed_protocol_reaches_the_simulators_model(heart, tmp_path, strategy, params):
    plan = heart_plan(heart, strategy, params)
    net = deploy(heart, plan, tmp_path)
    for name in heart.site_names:
        net.connect(name)
    net.run()
    assert net.coordinator.done and net.coordinator.phase.value == "finished"
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    # Same rounds, same participants, same per-site test metrics as the simulator reports.
    deployed, simulated = net.coordinator.history, sim.history
    assert [r["participants"] for r in deployed] == [r.participants for r in simulated]
    for d, s in zip(deployed, simulated, strict=True):
        assert d["site_metrics"].keys() == s.site_metrics.keys()
        for site in s.site_metrics:
            assert d["site_metrics"][site]["accuracy"] == pytest.approx(
                s.site_metrics[site]["accuracy"]
            )
        assert d["train_loss"] == pytest.approx(s.train_loss, rel=1e-5)
        assert d["download_bytes"] == s.download_bytes
        # Compressed updates cross the wire encoded: the bytes match the simulator's count.
        assert d["site_upload_bytes"] == s.site_upload_bytes
    for site, stats in sim.final_eval.items():  # personal models for ditto
        assert net.coordinator.final_eval[site].summary() == pytest.approx(
            stats.summary(), nan_ok=True
        )


def test_partial_participation_samples_the_simulators_sites(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", participation=Participation(0.5, 2))
    net = deploy(heart, plan, tmp_path)
    for name in heart.site_names:
        net.connect(name)
    net.run()
    sim = simulate(heart, plan)
    assert [r["participants"] for r in net.coordinator.history] == [
        r.participants for r in sim.history
    ]
    np.testing.assert_allclose(net.coordinator.final_params, sim.final_params[0], atol=1e-6)


def test_personalised_fedper_keeps_heads_at_the_sites_and_matches_the_simulator(heart, tmp_path):
    plan = heart_plan(
        heart, "fedper", {"finetune_epochs": 1}, rounds=3, model="mlp", model_params={"hidden": [8]}
    )
    net = deploy(heart, plan, tmp_path)
    for name in heart.site_names:
        net.connect(name)
    net.run()
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    heads_differ = False
    for site in heart.site_names:
        head = net.sites[site].state["personal/local_values"]
        heads_differ |= not np.allclose(
            head, net.sites[heart.site_names[0]].state["personal/local_values"]
        )
        assert net.coordinator.final_eval[site].summary() == pytest.approx(
            sim.final_eval[site].summary(), nan_ok=True
        )
    assert heads_differ


def test_deployed_central_dp_releases_the_simulators_model_and_epsilon(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}})
    net = deploy(heart, plan, tmp_path)
    for name in heart.site_names:
        net.connect(name)
    net.run()
    assert net.coordinator.phase.value == "finished"
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    deployed_eps = [r["epsilon"] for r in net.coordinator.history]
    assert deployed_eps == pytest.approx([r.epsilon for r in sim.history], rel=1e-12)
    assert deployed_eps[0] < deployed_eps[-1]  # spent round by round
    completed = [e for e in net.coordinator.drain_events() if e.kind == "round_completed"]
    assert [e.detail["epsilon"] for e in completed] == deployed_eps
    # The noise really moved the model: without it the deployed run is plain FedAvg.
    plain = simulate(heart, heart_plan(heart, "fedavg", {"weighting": "uniform"}))
    assert np.abs(net.coordinator.final_params - plain.state.params).max() > 1e-3
