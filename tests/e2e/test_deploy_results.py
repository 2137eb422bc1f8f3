"""Hospitals' own CSV files deployed over mTLS; the results land in the study folder.

Real processes through the ``fedcare`` CLI: a coordinator and two hospitals, each with
its own file (started together: a site agent retries until the coordinator listens). One hospital's export has a renamed column: its agent refuses to take part,
names the file and the column in its terminal and at the coordinator; the hospital fixes
the file, restarts, and the study runs. At the end the study folder holds what a simulated
study writes (metrics.json, report.html, models/), agreeing with the run store, and the
model equals the same study simulated with per-site normalisation.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedcare.data.registry import load_dataset
from fedcare.net.store import RunStore
from fedcare.net.tls import init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.study.config import load_config
from tests.data.conftest import SCHEMA_DICT, site_frame
from tests.e2e.test_deploy import Deployment, simulated_model

pytestmark = pytest.mark.slow

HOSPITALS = ("north", "east")


def study_yaml(root: Path) -> str:
    files = {site: str(root / "hospitals" / f"{site}.csv") for site in HOSPITALS}
    return yaml.safe_dump(
        {
            "name": "own-tables",
            "dataset": {
                "name": "tabular",
                "params": {
                    "schema": str(root / "schema.yaml"),
                    "files": files,
                    "normalise": "site",
                },
            },
            "model": {"name": "logistic"},
            "seeds": [0],
            "rounds": 3,
            "local": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8},
            "baselines": [],
            "strategies": [{"name": "fedavg"}],
        },
        sort_keys=False,
    )


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[Deployment]:
    ca = init_study_ca(tmp_path / "ca", "own-tables")
    issue_bundle(ca, "coordinator", tmp_path / "bundles" / "coordinator", "coordinator")
    for site in HOSPITALS:
        issue_bundle(ca, site, tmp_path / "bundles" / site, "site")
    (tmp_path / "hospitals").mkdir()
    for i, site in enumerate(HOSPITALS):
        site_frame(i, 80 + 20 * i).to_csv(tmp_path / "hospitals" / f"{site}.csv", index=False)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA_DICT))
    (tmp_path / "study.yaml").write_text(study_yaml(tmp_path))
    dep = Deployment(tmp_path, rounds=3)
    yield dep
    for proc in dep.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_site(dep: Deployment, name: str, port: int):  # type: ignore[no-untyped-def]
    return dep.site(name, port, data=f"hospitals/{name}.csv")


def test_own_csv_files_refuse_a_bad_column_then_results_land_in_the_study_folder(
    tables: Deployment,
) -> None:
    dep = tables
    study_hash = dep.study_plan().hash
    # East's owner approved in advance; north's owner decides while east fixes its export
    # (a site whose data failed is out of the run: rounds would go on without it).
    ApprovalStore(dep.root / "sites" / "east" / "approvals.json").approve(study_hash, by="owner")
    good = dep.root / "hospitals" / "east.csv"
    frame = site_frame(2, 120)
    frame.rename(columns={"ward": "Ward "}).to_csv(good, index=False)  # the bad export

    with socket.socket() as probe:  # a free port, so the sites can start with the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    coordinator = dep.spawn(
        "coordinator",
        [
            sys.executable, "-m", "fedcare.cli.main", "coordinator", "start",
            "--study", str(dep.study), "--out", str(dep.out), "--bundle", "bundles/coordinator",
            "--ca", "ca", "--address", f"127.0.0.1:{port}", "--run-id", "tables-run",
            "--start-grace", "300", "--round-timeout", "60",
        ],
    )  # fmt: skip
    for site in HOSPITALS:
        start_site(dep, site, port)
    east = dep.procs[-1]
    assert east.wait(timeout=60) != 0
    east_log = dep.log("east").read_text()
    assert "DATA CHECK FAILED" in east_log and "did not take part" in east_log
    assert "hospitals/east.csv" in east_log and "column 'ward'" in east_log
    dep.wait_log("coordinator", "site 'east' reports ")
    assert "column 'ward'" in dep.log("coordinator").read_text()
    assert "training at" not in dep.log("coordinator").read_text()

    frame.to_csv(good, index=False)  # the hospital fixes its export and restarts
    start_site(dep, "east", port)
    dep.wait_log("coordinator", "site 'east' is back in the run")
    dep.wait_log("coordinator", "site 'east' approved the plan")
    ApprovalStore(dep.root / "sites" / "north" / "approvals.json").approve(study_hash, by="owner")
    assert coordinator.wait(timeout=120) == 0, dep.log("coordinator").read_text()

    out = dep.out
    for name in ("metrics.json", "metrics.csv", "report.html", "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "models" / "fedavg-seed0.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    result = json.loads((out / "deploy" / "tables-run" / "result.json").read_text())
    (entry,) = metrics["strategies"]
    assert [s["name"] for s in metrics["sites"]] == list(HOSPITALS)
    for site in HOSPITALS:
        assert entry["per_site"][site]["accuracy"]["mean"] == result["final_eval"][site]["accuracy"]
    (run,) = metrics["deployment"]["runs"]
    with RunStore.in_folder(out) as store:
        stored = store.rounds("tables-run")
        assert [r["contributed"] for r in run["rounds"]] == [
            r.by_status("contributed") for r in stored
        ]
        assert all(sorted(r.by_status("contributed")) == sorted(HOSPITALS) for r in stored)
        assert (
            run["rounds"][-1]["pooled_accuracy"] == stored[-1].metrics["pooled_metrics"]["accuracy"]
        )
    assert entry["overall"]["pooled_accuracy"]["mean"] == pytest.approx(
        stored[-1].metrics["pooled_metrics"]["accuracy"]
    )
    assert "tables-run" in (out / "report.html").read_text()

    # Same columns at every site, per-site normalisation: the simulator's model exactly.
    config = load_config(dep.study)
    dataset = load_dataset("tabular", **config.dataset.params)
    np.testing.assert_allclose(
        dep.final_model("tables-run"), simulated_model(dep, dataset), atol=1e-6
    )
