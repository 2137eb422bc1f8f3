"""A small deployed heart study to crash: a coordinator process, site agents over mTLS.

Shared by tests/e2e/test_crash_points.py (a fault point per test) and
benchmarks/crash_soak.py (kill -9 at random moments). The coordinator is always a real
process (``fedcare coordinator start|resume``); sites are agents in this process
(threads: they survive the coordinator's death and reconnect, as real agents do) except
the one a test kills, which is a ``fedcare site start`` process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedcare.cli.deploy import _site_data, study_from_config
from fedcare.net.channel import Backoff
from fedcare.net.reconcile import disagreements
from fedcare.net.site_agent import SiteAgent
from fedcare.net.site_training import site_training
from fedcare.net.store import RunStore
from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import verify
from fedcare.runtime.site import SiteMachine
from fedcare.study.config import load_config

SITES = ("cleveland", "hungarian", "switzerland", "va")
RUN = "crash"
ROUNDS = 3
STUDY = f"""\
name: heart-crash
dataset: {{name: heart-disease}}
model: {{name: logistic}}
seeds: [0]
rounds: {ROUNDS}
local: {{optimizer: sgd, lr: 0.02, epochs: 1, batch_size: 16}}
baselines: []
strategies:
  - name: scaffold
"""
KILLED = 137
MIN_SITES = 4


@dataclass
class Crashable:
    """One deployment in ``root``: CA, bundles, study, approvals; what it started."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: dict[str, threading.Thread] = field(default_factory=dict)
    stops: list[threading.Event] = field(default_factory=list)
    port: int = 0

    @classmethod
    def create(cls, root: Path) -> Crashable:
        root.mkdir(parents=True, exist_ok=True)
        ca = init_study_ca(root / "ca", "heart-crash")
        issue_bundle(ca, "coordinator", root / "bundles" / "coordinator", "coordinator")
        for site in SITES:
            issue_bundle(ca, site, root / "bundles" / site, "site")
        (root / "study.yaml").write_text(STUDY)
        # --min-sites 4 (a site that dies makes the round retry, not run short) is in the plan.
        study = study_from_config(load_config(root / "study.yaml"), None, None, None, MIN_SITES)
        study_hash = study.plan.hash
        for site in SITES:
            ApprovalStore(root / "sites" / site / "approvals.json").approve(study_hash, by="owner")
        return cls(root, port=_free_port())

    @property
    def out(self) -> Path:
        return self.root / "out"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _spawn(self, name: str, args: list[str], fault: str = "") -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "FEDCARE_FAULT"}
        if fault:
            env["FEDCARE_FAULT"] = fault
        with open(self.log(name), "ab") as fh:
            proc = subprocess.Popen(
                args, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root, env=env
            )
        self.procs.append(proc)
        return proc

    def coordinator(self, fault: str = "", *, resume: bool = False) -> subprocess.Popen[bytes]:
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        command = ["resume", RUN] if resume else ["start", "--study", "study.yaml"]
        args = [
            sys.executable, "-m", "fedcare.cli.main", "coordinator", *command,
            "--out", "out", "--bundle", "bundles/coordinator", "--ca", "ca",
            "--address", f"127.0.0.1:{self.port}", "--port-file", str(port_file),
        ]  # fmt: skip
        if not resume:
            args += ["--run-id", RUN, "--min-sites", str(MIN_SITES), "--start-grace", "120"]
        proc = self._spawn("coordinator", args, fault)
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None:
                return proc  # died before listening (a fault point at start, or an error)
            if time.monotonic() > deadline:
                raise AssertionError(self.log("coordinator").read_text())
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return proc

    def agent(self, name: str) -> None:
        """A site agent in this process (reconnects with a short back-off)."""
        rows, check = _site_data(f"heart-disease:{name}")
        state = self.root / "sites" / name
        machine = SiteMachine(
            name,
            ApprovalStore(state / "approvals.json"),
            check,
            site_training(rows),
            coordinator="coordinator",
        )
        lines: list[str] = []
        agent = SiteAgent(
            machine,
            f"127.0.0.1:{self.port}",
            bundle=TlsBundle.load(self.root / "bundles" / name),
            state_dir=state,
            log=lines.append,
            backoff=Backoff(initial_s=0.1, maximum_s=0.5),
            tick_s=0.2,
        )
        stop = threading.Event()  # its own: an agent sets it when it finishes
        self.stops.append(stop)
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        self.agents[name] = thread

    def site_process(self, name: str, fault: str = "") -> subprocess.Popen[bytes]:
        return self._spawn(
            name,
            [
                sys.executable, "-m", "fedcare.cli.main", "site", "start",
                "--coordinator", f"127.0.0.1:{self.port}", "--bundle", f"bundles/{name}",
                "--data", f"heart-disease:{name}", "--state", f"sites/{name}",
            ],
            fault,
        )  # fmt: skip

    def wait_site_agents(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.agents.values():
            thread.join(max(deadline - time.monotonic(), 0.1))

    def close(self) -> None:
        for stop in self.stops:
            stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        for thread in self.agents.values():
            thread.join(5)

    # -- what a finished run must show ---------------------------------------------------

    def final_model(self) -> np.ndarray:
        return load_file(str(self.out / "deploy" / RUN / "model.safetensors"))["params"]

    def status(self) -> str:
        with RunStore.in_folder(self.out) as store:
            return store.run(RUN).status

    def problems(self) -> list[str]:
        """Disagreements between runs.db, checkpoint and audit log, plus audit verify."""
        found = disagreements(self.out, RUN)
        keys = {
            "coordinator": TlsBundle.load(self.root / "bundles/coordinator").signing_public_key()
        }
        report = verify(self.out / "audit.log", keys)
        if not report.ok:
            found.append(f"audit verify: {report.summary()}")
        return found


def _free_port() -> int:
    """A fixed port for the deployment, as a real coordinator has: a coordinator killed
    before it listens (a fault point at start) is resumed on the port the agents dial."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reference_model(root: Path) -> np.ndarray:
    """The uninterrupted run's final model."""
    dep = Crashable.create(root)
    try:
        coordinator = dep.coordinator()
        for site in SITES:
            dep.agent(site)
        assert coordinator.wait(timeout=300) == 0, dep.log("coordinator").read_text()
        return dep.final_model()
    finally:
        dep.close()
