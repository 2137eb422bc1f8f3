"""Who takes part in a deployed round, across real processes over mTLS on loopback.

Owners who approve a second or two apart all get round 1 (the start grace is for absent
sites, not for owners still deciding); a hospital whose file fails its check is out of
the run and no round waits for it; when no usable site is left the run stops at once,
saying which site failed and why.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedcare.net.store import RunStore
from fedcare.runtime.approvals import ApprovalStore
from tests.data.conftest import site_frame
from tests.e2e.test_deploy import SITES, Deployment, cli, deployment, simulated_model  # noqa: F401
from tests.e2e.test_deploy_results import HOSPITALS, start_site, tables  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("deployment", [2], indirect=True)
def test_owners_approving_seconds_apart_all_take_part_in_round_one(
    deployment: Deployment,  # noqa: F811
) -> None:
    dep = deployment
    study_hash = dep.study_plan().hash
    # A start grace far shorter than the owners take: it must not start round 1 early.
    coordinator, port = dep.coordinator(
        "--run-id", "owners", "--start-grace", "1", "--round-timeout", "120"
    )
    for site in SITES:
        dep.site(site, port, "--threads", "1")
    for site in SITES:
        dep.wait_log(site, f"fedcare site approve {study_hash}")
    time.sleep(2.0)  # the grace is over; nobody has approved yet
    for site in SITES:
        ApprovalStore(dep.root / "sites" / site / "approvals.json").approve(
            study_hash, by=f"data owner of {site}"
        )
        dep.wait_log(site, "approved: ")
        time.sleep(1.5)  # the coordinator has long heard of it
        if site != SITES[-1]:
            assert "training at" not in dep.log("coordinator").read_text()
    for site in SITES:
        dep.wait_log("coordinator", f"site '{site}' approved the plan")
    assert coordinator.wait(timeout=180) == 0, dep.log("coordinator").read_text()

    log = dep.log("coordinator").read_text()
    assert "ran short" not in log and "WARNING" not in log
    with RunStore.in_folder(dep.out) as store:
        rounds = store.rounds("owners")
        assert [sorted(r.by_status("contributed")) for r in rounds] == [sorted(SITES)] * 2
    np.testing.assert_allclose(dep.final_model("owners"), simulated_model(dep), atol=1e-6)


def test_a_hospital_whose_file_fails_is_not_waited_for_and_status_says_why(
    tables: Deployment,  # noqa: F811
) -> None:
    dep = tables
    study_hash = dep.study_plan().hash
    ApprovalStore(dep.root / "sites" / "north" / "approvals.json").approve(study_hash, by="owner")
    bad = site_frame(2, 120).rename(columns={"ward": "Ward "})
    bad.to_csv(dep.root / "hospitals" / "east.csv", index=False)
    # Were east waited for, each round would sit out the whole start grace.
    coordinator, port = dep.coordinator(
        "--run-id", "without-east", "--start-grace", "600", "--round-timeout", "60"
    )
    started = time.monotonic()
    for site in HOSPITALS:
        start_site(dep, site, port)
    assert coordinator.wait(timeout=150) == 0, dep.log("coordinator").read_text()
    assert time.monotonic() - started < 150

    log = dep.log("coordinator").read_text()
    assert "WARNING: round 1 ran short: 1 of 2 sampled site(s) contributed; missing 'east' " in log
    assert "data failed its check" in log and "column 'ward'" in log
    assert "site 'east' disconnected after reporting data problems" in log
    assert not [line for line in log.splitlines() if line.rstrip().endswith("disconnected:")]
    with RunStore.in_folder(dep.out) as store:
        rounds = store.rounds("without-east")
        assert [r.by_status("contributed") for r in rounds] == [["north"]] * dep.rounds
        assert all(set(r.missing()) == {"east"} for r in rounds)
    status = cli(dep, "coordinator", "status", "--out", str(dep.out))
    assert "data problem" in status and "data failed its check" in status
    assert "round 1 ran short" in status


def test_the_run_stops_with_each_hospitals_reason_when_every_file_fails(
    tables: Deployment,  # noqa: F811
) -> None:
    dep = tables
    for i, site in enumerate(HOSPITALS):
        frame = site_frame(i, 80).rename(columns={"ward": "Ward "})
        frame.to_csv(dep.root / "hospitals" / f"{site}.csv", index=False)
    coordinator, port = dep.coordinator(
        "--run-id", "nobody", "--start-grace", "600", "--round-timeout", "60"
    )
    for site in HOSPITALS:
        start_site(dep, site, port)
    assert coordinator.wait(timeout=120) == 2  # not waiting forever at round 0

    log = dep.log("coordinator").read_text()
    assert "STOPPED: run nobody: stopped before round 1" in log
    assert "only 0 of the 2 site(s) sampled for it can take part" in log
    for site in HOSPITALS:
        assert f"'{site}': data failed its check" in log
    with RunStore.in_folder(dep.out) as store:
        assert store.run("nobody").status == "failed"
        assert store.rounds("nobody") == []
    status = cli(dep, "coordinator", "status", "--out", str(dep.out))
    assert "nobody failed: stopped before round 1" in " ".join(status.split())
