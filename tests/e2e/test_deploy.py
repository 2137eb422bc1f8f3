"""The heart study deployed: a coordinator and four site processes on loopback with mTLS.

Real processes started through the ``fedcare`` CLI (plus one site that crashes on purpose),
real certificates from the study CA, real kill -9. Each test says which failure it stages.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedcare.algorithms.registry import build_strategy
from fedcare.cli.deploy import initial_model, plan_from_study, study_from_config
from fedcare.data.registry import load_dataset
from fedcare.models.registry import build_model
from fedcare.net.store import RunStore
from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import verify
from fedcare.sim.engine import FederatedSimulation
from fedcare.study.config import load_config

pytestmark = pytest.mark.slow

SITES = ("cleveland", "hungarian", "switzerland", "va")
ROOT = Path(__file__).resolve().parents[2]
STUDY = """\
name: heart-deploy
dataset: {name: heart-disease}
model: {name: logistic}
seeds: [0]
rounds: ROUNDS
local: {optimizer: sgd, lr: 0.02, epochs: 1, batch_size: 16}
baselines: []
strategies:
  - name: fedavg
"""


@dataclass
class Deployment:
    """A study folder, its CA and bundles, and the processes started for one test."""

    root: Path
    rounds: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def study(self) -> Path:
        return self.root / "study.yaml"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def plan(self):  # type: ignore[no-untyped-def]
        return plan_from_study(load_config(self.study), None, None, None, None)

    def study_plan(self):  # type: ignore[no-untyped-def]
        """Every run the coordinator deploys, under the one hash each owner approves."""
        return study_from_config(load_config(self.study)).plan

    def approve_everywhere(self) -> None:
        for site in SITES:
            ApprovalStore(self.root / "sites" / site / "approvals.json").approve(
                self.plan().hash, by=f"data owner of {site}"
            )

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log(name), "ab") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root)
        self.procs.append(proc)
        return proc

    def coordinator(self, *extra: str, port: int = 0, resume: str | None = None):  # type: ignore[no-untyped-def]
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        command = ["resume", resume] if resume else ["start", "--study", str(self.study)]
        common = [
            "--out", str(self.out), "--bundle", "bundles/coordinator", "--ca", "ca",
            "--address", f"127.0.0.1:{port}", "--port-file", str(port_file),
        ]  # fmt: skip
        args = [sys.executable, "-m", "fedcare.cli.main", "coordinator", *command, *common]
        proc = self.spawn("coordinator", args + list(extra))
        deadline = time.monotonic() + 90
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log("coordinator").read_text())
            time.sleep(0.1)
        return proc, int(port_file.read_text())

    def site(
        self, name: str, port: int, *extra: str, data: str | None = None
    ) -> subprocess.Popen[bytes]:
        """``fedcare site start`` for ``name`` (its shipped heart data unless ``data``)."""
        return self.spawn(
            name,
            [
                sys.executable, "-m", "fedcare.cli.main", "site", "start",
                "--coordinator", f"127.0.0.1:{port}", "--bundle", f"bundles/{name}",
                "--data", data or f"heart-disease:{name}", "--state", f"sites/{name}", *extra,
            ],
        )  # fmt: skip

    def crashing_site(
        self, name: str, port: int, crash_round: int, step: str = ""
    ) -> subprocess.Popen[bytes]:
        """A site agent that dies (os._exit 9) in ``crash_round`` (see crashing_site.py)."""
        return self.spawn(
            name,
            [
                sys.executable, str(ROOT / "tests/e2e/crashing_site.py"), f"127.0.0.1:{port}",
                f"bundles/{name}", f"sites/{name}", f"heart-disease:{name}", str(crash_round),
                *([step] if step else []),
            ],
        )  # fmt: skip

    def wait_log(self, name: str, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name).read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"'{text}' not in {name}.log:\n{self.log(name).read_text()}")
            time.sleep(0.1)

    def final_model(self, run_id: str) -> np.ndarray:
        return load_file(str(self.out / "deploy" / run_id / "model.safetensors"))["params"]


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    rounds = getattr(request, "param", 6)
    ca = init_study_ca(tmp_path / "ca", "heart-deploy")
    issue_bundle(ca, "coordinator", tmp_path / "bundles" / "coordinator", "coordinator")
    for site in SITES:
        issue_bundle(ca, site, tmp_path / "bundles" / site, "site")
    (tmp_path / "study.yaml").write_text(STUDY.replace("ROUNDS", str(rounds)))
    dep = Deployment(tmp_path, rounds)
    yield dep
    for proc in dep.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def simulated_model(dep: Deployment, dataset: Any = None) -> np.ndarray:
    """The same study in the simulator, uninterrupted: the model the deployment must reach."""
    plan = dep.plan()
    dataset = dataset if dataset is not None else load_dataset("heart-disease")
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


def cli(dep: Deployment, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "fedcare.cli.main", *args],
        cwd=dep.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("deployment", [8], indirect=True)
def test_heart_study_over_mtls_survives_kill_9_of_the_coordinator_and_matches_the_simulator(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.approve_everywhere()
    coordinator, port = dep.coordinator(
        "--run-id", "heart-run", "--start-grace", "300", "--round-timeout", "120"
    )
    for site in SITES:
        dep.site(site, port)
    dep.wait_log("coordinator", "round 3 done")
    coordinator.send_signal(signal.SIGKILL)  # no clean-up, no last checkpoint
    coordinator.wait()
    assert "finished after" not in dep.log("coordinator").read_text()

    resumed, _ = dep.coordinator(resume="heart-run", port=port)
    assert resumed.wait(timeout=150) == 0, dep.log("coordinator").read_text()
    assert "resuming run heart-run after round" in dep.log("coordinator").read_text()

    deployed = dep.final_model("heart-run")
    np.testing.assert_allclose(deployed, simulated_model(dep), rtol=0, atol=1e-6)
    assert not np.allclose(deployed, initial_model(dep.plan()))

    with RunStore.in_folder(dep.out) as store:
        assert store.run("heart-run").status == "finished"
        rounds = store.rounds("heart-run")
        assert [r.round for r in rounds] == list(range(dep.rounds))
        assert all(sorted(r.by_status("contributed")) == sorted(SITES) for r in rounds)
        assert store.events("heart-run", "run_resumed")
    status = cli(dep, "coordinator", "status", "--out", str(dep.out))
    assert "heart-run" in status and "finished" in status
    keys = {"coordinator": TlsBundle.load(dep.root / "bundles/coordinator").signing_public_key()}
    report = verify(dep.out / "audit.log", keys)
    assert report.ok, report.summary()
    for site in SITES:
        assert f"site '{site}': run over (finished)" in dep.log(site).read_text()


def test_sites_wait_for_approval_then_a_site_killed_mid_round_is_dropped_and_rejoins(
    deployment: Deployment,
) -> None:
    dep = deployment
    coordinator, port = dep.coordinator(
        "--run-id", "crash-run", "--start-grace", "300", "--round-timeout", "60"
    )
    for site in SITES[:3]:
        dep.site(site, port)
    crash_round = 2
    crashing = dep.crashing_site("va", port, crash_round)

    # Nothing runs before each data owner approves the study; the coordinator shows who waits.
    study_hash = dep.study_plan().hash
    for site in SITES[:3]:
        dep.wait_log("coordinator", f"site '{site}' is waiting for its data owner")
        dep.wait_log(site, f"fedcare site approve {study_hash}")
    status = cli(dep, "coordinator", "status", "--out", str(dep.out))
    assert f"waiting for approval (fedcare site approve {study_hash})" in status
    assert "training at" not in dep.log("coordinator").read_text()
    cli(dep, "site", "approve", study_hash, "--state", "sites/cleveland", "--by", "dr. owner")
    for site in SITES[1:]:
        ApprovalStore(dep.root / "sites" / site / "approvals.json").approve(study_hash, by="owner")

    # va dies (os._exit, like kill -9) while training round 3; the round goes on without it.
    assert crashing.wait(timeout=120) == 9
    dep.wait_log("coordinator", "site 'va' dropped from the round")
    dep.site("va", port)  # the hospital restarts its agent; it rejoins the next round
    assert coordinator.wait(timeout=150) == 0, dep.log("coordinator").read_text()

    with RunStore.in_folder(dep.out) as store:
        rounds = {r.round: r for r in store.rounds("crash-run")}
        dropped = rounds[crash_round]
        assert sorted(dropped.by_status("contributed")) == sorted(SITES[:3])
        assert "va" in dropped.by_status("dropped")
        assert all(r.status == "finished" for r in rounds.values())
        assert sorted(rounds[crash_round + 1].by_status("contributed")) == sorted(SITES)
