"""A KM + Cox query deployed: a coordinator and four site processes on loopback with mTLS.

Real processes through the ``fedcare`` CLI (``coordinator start --study analysis.yaml``,
``site query``), real certificates from the study CA, a real kill -9 of the coordinator
halfway; the deployed numbers must be exactly the simulator's (``fedcare analyze`` on the
same file).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import AuditLog, verify
from fedcare.runtime.query_release_log import RELEASE_LOG, compare_releases
from fedcare.study.analysis_config import load_analysis_config
from fedcare.study.analysis_runner import AnalysisRunner

pytestmark = pytest.mark.slow

SITES = ("northeast", "south", "west", "midwest")
ANALYSIS = f"""\
name: brca-deployed
dataset: {{name: tcga-brca}}
sites: [{", ".join(SITES)}]
disclosure: {{min_cell: 1}}
analyses:
  - {{kind: km}}
  - {{kind: cox, params: {{covariates: [age_at_index, race_white]}}}}
"""


def spawn(root: Path, name: str, args: list[str], procs: list) -> subprocess.Popen[bytes]:
    with open(root / f"{name}.log", "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcare.cli.main", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    procs.append(proc)
    return proc


def spawn_site_agents(
    root: Path, port: int, sites: tuple[str, ...] | list[str], procs: list
) -> list[subprocess.Popen[bytes]]:
    """One `fedcare site query` agent per site, each on its own TCGA-BRCA region."""
    agents = []
    for site in sites:
        args = [
            "site", "query", "--coordinator", f"127.0.0.1:{port}",
            "--bundle", f"bundles/{site}", "--data", f"tcga-brca:{site}",
            "--state", f"sites/{site}",
        ]  # fmt: skip
        agents.append(spawn(root, site, args, procs))
    return agents


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not log.exists() or text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"'{text}' not in {log}:\n{log.read_text()}"
        time.sleep(0.1)


def test_a_km_and_cox_query_over_mtls_survives_kill_9_and_gives_exactly_the_simulators_numbers(
    tmp_path: Path,
) -> None:
    ca = init_study_ca(tmp_path / "ca", "brca-query")
    issue_bundle(ca, "coordinator", tmp_path / "bundles" / "coordinator", "coordinator")
    for site in SITES:
        issue_bundle(ca, site, tmp_path / "bundles" / site, "site")
    analysis = tmp_path / "analysis.yaml"
    analysis.write_text(ANALYSIS)
    simulated = AnalysisRunner(load_analysis_config(analysis), tmp_path / "sim").run()
    for site in SITES:  # each owner approves the plan's hash (as `fedcare site approve`)
        store = ApprovalStore(tmp_path / "sites" / site / "approvals.json")
        store.approve(simulated.plan_hash, by=f"data owner of {site}")
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    coordinator_args = [
        "coordinator", "start", "--study", str(analysis), "--out", "out",
        "--bundle", "bundles/coordinator", "--ca", "ca", "--run-id", "brca-query",
        "--address", f"127.0.0.1:{port}",
    ]  # fmt: skip
    try:
        first = spawn(tmp_path, "coordinator", coordinator_args, procs)
        sites = spawn_site_agents(tmp_path, port, SITES, procs)
        # Kill the coordinator once a few Newton steps of the Cox fit are combined.
        wait_for(tmp_path / "coordinator.log", "question 4 (cox/", first)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = spawn(tmp_path, "coordinator", coordinator_args, procs)
        assert second.wait(timeout=300) == 0, (tmp_path / "coordinator.log").read_text()
        for site, proc in zip(SITES, sites, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{site}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    said = (tmp_path / "coordinator.log").read_text()
    assert "resuming from query-checkpoint.json" in said
    deployed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert deployed["study"]["plan_hash"] == simulated.plan_hash
    assert deployed["analyses"] == simulated.metrics["analyses"]  # exactly, every number
    assert deployed["study"]["mode"] == "deployed"
    assert {s["name"]: s["rows"] for s in deployed["sites"]} == {
        s["name"]: s["rows"] for s in simulated.metrics["sites"]
    }
    # Every release is in the signed audit log (the question open at the kill was asked
    # again, so it may appear twice), and every question has every site's release.
    log = tmp_path / "out" / "audit.log"
    keys = {"coordinator": TlsBundle.load(tmp_path / "bundles/coordinator").signing_public_key()}
    report = verify(log, keys)
    assert report.ok, report.summary()
    entries = [e for e in AuditLog(log).entries() if e.kind == "query_release"]
    questions = {e.body["question"] for e in entries}
    assert questions == set(range(len(questions))) and len(questions) >= 6
    assert {(e.body["site"], e.body["question"]) for e in entries} == {
        (site, q) for site in SITES for q in questions
    }
    assert "released km.counts" in (tmp_path / "south.log").read_text()
    # Each site kept every release it sent, signed, and the coordinator's log agrees with
    # it (the question re-asked after the kill matches either of the site's answers).
    for site in SITES:
        released = tmp_path / "sites" / site / RELEASE_LOG
        site_key = {site: TlsBundle.load(tmp_path / "bundles" / site).signing_public_key()}
        assert verify(released, site_key).ok
        assert {e.body["question"] for e in AuditLog(released).entries()} == questions
        assert compare_releases(log, released, site) == []
    checked = subprocess.run(
        [sys.executable, "-m", "fedcare.cli.main", "audit", "verify",
         str(tmp_path / "sites" / "west" / RELEASE_LOG), "--bundle", "bundles/west",
         "--copy", "west", "--against", str(log)],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The folder lists every release once, across the restart, as the simulator does.
    assert [(r["question"], r["site"]) for r in deployed["releases"]] == [
        (r["question"], r["site"]) for r in simulated.metrics["releases"]
    ]


SECURE = f"""\
name: brca-secagg
dataset: {{name: tcga-brca}}
sites: [{", ".join(SITES[:3])}]
disclosure: {{min_cell: 1}}
secure: secagg
analyses:
  - {{kind: km}}
"""


def test_a_secagg_km_query_over_mtls_relays_real_secagg_and_gives_the_simulators_numbers(
    tmp_path: Path,
) -> None:
    sites = SITES[:3]
    ca = init_study_ca(tmp_path / "ca", "brca-secagg")
    issue_bundle(ca, "coordinator", tmp_path / "bundles" / "coordinator", "coordinator")
    for site in sites:
        issue_bundle(ca, site, tmp_path / "bundles" / site, "site")
    analysis = tmp_path / "analysis.yaml"
    analysis.write_text(SECURE)
    simulated = AnalysisRunner(load_analysis_config(analysis), tmp_path / "sim").run()
    for site in sites:
        store = ApprovalStore(tmp_path / "sites" / site / "approvals.json")
        store.approve(simulated.plan_hash, by=f"data owner of {site}")
    procs: list[subprocess.Popen[bytes]] = []
    port = free_port()
    try:
        coordinator = spawn(
            tmp_path,
            "coordinator",
            ["coordinator", "start", "--study", str(analysis), "--out", "out",
             "--bundle", "bundles/coordinator", "--ca", "ca", "--run-id", "brca-secagg",
             "--address", f"127.0.0.1:{port}"],
            procs,
        )  # fmt: skip
        agents = spawn_site_agents(tmp_path, port, sites, procs)
        assert coordinator.wait(timeout=300) == 0, (tmp_path / "coordinator.log").read_text()
        for site, proc in zip(sites, agents, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{site}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    deployed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert deployed["analyses"] == simulated.metrics["analyses"]  # exactly, every number
    # The coordinator logged each summed release masked (a layout, never a digest of
    # values); each site's own log holds what it fed the sum, and the two agree.
    log = tmp_path / "out" / "audit.log"
    masked = [
        e for e in AuditLog(log).entries()
        if e.kind == "query_release" and e.body.get("secure") == "secagg"
    ]  # fmt: skip
    assert {e.body["site"] for e in masked} == set(sites)
    assert all("values_sha256" not in e.body for e in masked)
    for site in sites:
        assert compare_releases(log, tmp_path / "sites" / site / RELEASE_LOG, site) == []
