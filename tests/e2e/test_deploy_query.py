"""A KM + Cox query deployed: a coordinator and four site processes on loopback with mTLS.

Real processes through the ``fedcare`` CLI (``coordinator start --study analysis.yaml``,
``site query``), real certificates from the study CA; the deployed numbers must be exactly
the simulator's (``fedcare analyze`` on the same file).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import AuditLog, verify
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


def test_a_deployed_km_and_cox_query_over_mtls_gives_exactly_the_simulators_numbers(
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
    try:
        coordinator = spawn(
            tmp_path,
            "coordinator",
            [
                "coordinator", "start", "--study", str(analysis), "--out", "out",
                "--bundle", "bundles/coordinator", "--ca", "ca",
                "--address", "127.0.0.1:0", "--port-file", "port",
            ],
            procs,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        port_file = tmp_path / "port"
        while not port_file.exists() or not port_file.read_text():
            assert coordinator.poll() is None, (tmp_path / "coordinator.log").read_text()
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.1)
        port = port_file.read_text()
        sites = []
        for site in SITES:
            args = [
                "site", "query", "--coordinator", f"127.0.0.1:{port}",
                "--bundle", f"bundles/{site}", "--data", f"tcga-brca:{site}",
                "--state", f"sites/{site}",
            ]  # fmt: skip
            sites.append(spawn(tmp_path, site, args, procs))
        assert coordinator.wait(timeout=300) == 0, (tmp_path / "coordinator.log").read_text()
        for site, proc in zip(SITES, sites, strict=True):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{site}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    deployed = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert deployed["study"]["plan_hash"] == simulated.plan_hash
    assert deployed["analyses"] == simulated.metrics["analyses"]  # exactly, every number
    assert deployed["study"]["mode"] == "deployed"
    assert {s["name"]: s["rows"] for s in deployed["sites"]} == {
        s["name"]: s["rows"] for s in simulated.metrics["sites"]
    }
    # Every release is in the signed audit log, once per site and question.
    log = tmp_path / "out" / "audit.log"
    keys = {"coordinator": TlsBundle.load(tmp_path / "bundles/coordinator").signing_public_key()}
    report = verify(log, keys)
    assert report.ok, report.summary()
    entries = [e for e in AuditLog(log).entries() if e.kind == "query_release"]
    questions = {e.body["question"] for e in entries}
    assert len(entries) == len(SITES) * len(questions)
    assert "released km.counts" in (tmp_path / "south.log").read_text()
