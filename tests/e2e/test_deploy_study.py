"""A whole study deployed: every strategy x seed it lists, under one approval per site.

Real processes through the ``fedcare`` CLI over mTLS on loopback: a coordinator and the four
heart hospitals. The study lists 2 strategies x 2 seeds (and baselines, which cannot
deploy). The coordinator names what it leaves out before anything starts; each data owner
approves the study's hash once; the four runs follow one another with the same site agents;
the study folder summarises both strategies over both seeds, and each run's model equals
the simulator's for that strategy and seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.cli.deploy import study_from_config
from fedcare.data.registry import load_dataset
from fedcare.models.registry import build_model
from fedcare.net.store import RunStore
from fedcare.net.tls import init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.rounds import RunPlan
from fedcare.sim.engine import FederatedSimulation
from fedcare.study.config import load_config
from tests.e2e.test_deploy import SITES, Deployment, cli

pytestmark = pytest.mark.slow

STUDY = """\
name: heart-two-by-two
dataset: {name: heart-disease}
model: {name: logistic}
seeds: [0, 1]
rounds: 3
local: {optimizer: sgd, lr: 0.02, epochs: 1, batch_size: 16}
baselines: [local, pooled]
strategies:
  - name: fedavg
  - name: fedprox
    params: {mu: 0.01}
"""


@pytest.fixture
def study_deployment(tmp_path: Path) -> Iterator[Deployment]:
    ca = init_study_ca(tmp_path / "ca", "heart-two-by-two")
    issue_bundle(ca, "coordinator", tmp_path / "bundles" / "coordinator", "coordinator")
    for site in SITES:
        issue_bundle(ca, site, tmp_path / "bundles" / site, "site")
    (tmp_path / "study.yaml").write_text(STUDY)
    dep = Deployment(tmp_path, 3)
    yield dep
    for proc in dep.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def simulated(plan: RunPlan) -> np.ndarray:
    dataset = load_dataset("heart-disease")
    sim = FederatedSimulation(
        module=build_model(plan.model, dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy(plan.strategy, plan.strategy_params),
        spec=plan.spec,
        rounds=plan.rounds,
        seed=plan.seed,
        participation=plan.participation,
    )
    return sim.run().final_params[0]


def test_a_study_of_two_strategies_and_two_seeds_deploys_under_one_approval_per_site(
    study_deployment: Deployment,
) -> None:
    dep = study_deployment
    study = study_from_config(load_config(dep.study)).plan
    assert [(r.strategy, r.seed) for r in study.runs] == [
        ("fedavg", 0), ("fedavg", 1), ("fedprox", 0), ("fedprox", 1),
    ]  # fmt: skip
    for site in SITES[1:]:  # these owners approved the study in advance
        ApprovalStore(dep.root / "sites" / site / "approvals.json").approve(study.hash, by="owner")
    coordinator, port = dep.coordinator(
        "--run-id", "two", "--start-grace", "300", "--round-timeout", "120"
    )
    for site in SITES:
        dep.site(site, port, "--threads", "1")

    # Before anything starts: what is left out, and the one hash that covers all four runs.
    dep.wait_log("coordinator", f"fedcare site approve {study.hash}")
    head = dep.log("coordinator").read_text()
    assert "not deployed: baselines (local, pooled)" in head
    assert "4 run(s), one after another" in head
    assert "training at" not in head

    # Cleveland's owner reviews the whole study and approves it once.
    dep.wait_log("cleveland", f"fedcare site approve {study.hash}")
    pending = cli(dep, "site", "pending", "--state", "sites/cleveland")
    assert "study 'heart-two-by-two': 4 runs" in pending
    assert all(f"plan {r.hash[:16]}" in pending for r in study.runs)
    cli(dep, "site", "approve", study.hash, "--state", "sites/cleveland", "--by", "dr. owner")

    assert coordinator.wait(timeout=400) == 0, dep.log("coordinator").read_text()
    run_ids = [f"two-{i}" for i in range(1, 5)]
    with RunStore.in_folder(dep.out) as store:
        assert [r.run_id for r in store.runs()] == run_ids
        assert all(r.status == "finished" for r in store.runs())
        assert [r.plan_hash for r in store.runs()] == [r.hash for r in study.runs]
        for run_id in run_ids:
            rounds = store.rounds(run_id)
            assert len(rounds) == 3
            assert all(sorted(r.by_status("contributed")) == sorted(SITES) for r in rounds)
    for site in SITES:  # one approval each, of the study; the agent stayed for every run
        assert list(ApprovalStore(dep.root / "sites" / site / "approvals.json").approved()) == [
            study.hash
        ]
        log = dep.log(site).read_text()
        assert log.count("run finished") == 4
        assert f"site '{site}': run over (finished)" in log

    for run_id, plan in zip(run_ids, study.runs, strict=True):
        np.testing.assert_allclose(dep.final_model(run_id), simulated(plan), rtol=0, atol=1e-6)

    metrics = json.loads((dep.out / "metrics.json").read_text())
    entries = {s["name"]: s for s in metrics["strategies"]}
    assert sorted(entries) == ["fedavg", "fedprox"]
    for entry in entries.values():
        assert len(entry["deployed_runs"]) == 2
        accuracy = entry["overall"]["mean_site_accuracy"]
        assert len(accuracy["values"]) == 2 and accuracy["std"] is not None  # mean ± std
    assert metrics["study"]["seeds"] == [0, 1]
    assert any("baselines (local, pooled)" in x for x in metrics["deployment"]["not_deployed"])
    report = (dep.out / "report.html").read_text()
    assert "Not deployed" in report and "baselines (local, pooled)" in report
