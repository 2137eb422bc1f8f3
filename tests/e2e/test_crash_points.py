"""kill -9 at every persistence and send point of a round, then resume: the same model.

The coordinator (a real process over loopback mTLS) dies at a named fault point
(``FEDCARE_FAULT=POINT@HIT``, exit 137 like kill -9); ``fedcare coordinator resume``
continues; the final model must equal the uninterrupted run's bit for bit, and runs.db,
the checkpoint and the audit log must agree (``fedcare audit verify`` ok, every finished
round in the store with its round_completed and checkpoint_saved entries, the latest
audited digest is the checkpoint in place). The same for a site agent killed at each of
its points and restarted.

CI walks the points in CI_POINTS (one test id each, about 20 s apiece on two cores);
``python benchmarks/crash_soak.py --walk`` walks every declared point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcare.core import faults
from fedcare.net import coordinator_server, site_agent  # noqa: F401  (declare their points)
from tests.e2e.crash_harness import KILLED, SITES, Crashable, reference_model

pytestmark = pytest.mark.slow

# Which hit of each point lands mid-run (3 rounds, 4 sites, evaluation every round).
COORDINATOR_HITS = {
    "coordinator.store.round_started": 2,
    "coordinator.audit.appended": 14,
    "coordinator.store.participant": 6,
    "coordinator.checkpoint.written": 3,
    "coordinator.checkpoint.renamed": 4,
    "coordinator.store.round_finished": 2,
    "coordinator.result.written": 1,
    "coordinator.store.status": 1,
    "coordinator.send.job_plan": 3,
    "coordinator.send.train_request": 6,
    "coordinator.send.update_verdict": 5,
    "coordinator.send.eval_request": 6,
    "coordinator.send.run_finished": 2,
    "coordinator.send.audit_entry": 20,
    # Just before a write (where a disk-full test fails it instead): the write is lost.
    "coordinator.store.create_run": 1,
    "coordinator.store.set_status": 2,
    "coordinator.store.start_round": 2,
    "coordinator.store.record_participant": 6,
    "coordinator.store.finish_round": 2,
    "coordinator.store.record_event": 20,
    "coordinator.store.set_site_status": 5,
    "coordinator.store.record_audit_head": 14,
    "coordinator.audit.append": 14,
    "coordinator.checkpoint.write": 3,
}
SITE_HITS = {
    "site.state.written": 2,
    "site.state.renamed": 3,
    "site.audit_copy.appended": 10,
    "site.send.hello": 1,
    "site.send.approval_status": 1,
    "site.send.update": 2,
    "site.send.eval_result": 2,
    "site.state.write": 2,
    "site.audit.append": 10,
}
# Declared points a run without misbehaving parties never reaches.
NOT_REACHED = {
    "coordinator.send.error_report": "sent only to a site that misbehaves or whose data failed",
    "site.send.error_report": "sent only when a site refuses a request",
}
VICTIM = "va"
# The CI subset (~3 min): the checkpoint's write and rename, the store after it, the
# evaluation request that tells sites a round counted, a site's state and upload, and the
# run's start and end.
CI_POINTS = [
    "coordinator.checkpoint.written",
    "coordinator.checkpoint.renamed",
    "coordinator.store.round_finished",
    "coordinator.send.eval_request",
    "site.state.renamed",
    "site.send.update",
    # The run's two ends: before it is registered, and after its result, before its status.
    "coordinator.store.create_run",
    "coordinator.result.written",
    "coordinator.store.status",
]


def test_every_declared_fault_point_has_a_hit_or_a_reason() -> None:
    declared = set(faults.points_of("coordinator")) | set(faults.points_of("site"))
    assert declared == set(COORDINATOR_HITS) | set(SITE_HITS) | set(NOT_REACHED)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return reference_model(tmp_path_factory.mktemp("reference"))


def crash_coordinator(dep: Crashable, point: str, hit: int) -> None:
    """Run with the coordinator dying at ``point@hit``, then resume it to the end."""
    coordinator = dep.coordinator(f"{point}@{hit}")
    for site in SITES:
        dep.agent(site)
    assert coordinator.wait(timeout=300) == KILLED, dep.log("coordinator").read_text()
    resumed = dep.coordinator(resume=True)
    assert resumed.wait(timeout=300) == 0, dep.log("coordinator").read_text()


def crash_site(dep: Crashable, point: str, hit: int) -> None:
    """Run with one site agent dying at ``point@hit``; its hospital restarts it."""
    coordinator = dep.coordinator()
    for site in SITES:
        if site != VICTIM:
            dep.agent(site)
    victim = dep.site_process(VICTIM, f"{point}@{hit}")
    assert victim.wait(timeout=300) == KILLED, dep.log(VICTIM).read_text()
    dep.site_process(VICTIM)
    assert coordinator.wait(timeout=300) == 0, dep.log("coordinator").read_text()


def walk(point: str, root: Path) -> Crashable:
    dep = Crashable.create(root)
    try:
        if point in COORDINATOR_HITS:
            crash_coordinator(dep, point, COORDINATOR_HITS[point])
        else:
            crash_site(dep, point, SITE_HITS[point])
    finally:
        dep.close()
    return dep


@pytest.mark.parametrize("point", CI_POINTS)
def test_killed_at_a_fault_point_the_run_resumes_to_the_identical_model(
    tmp_path: Path, reference: np.ndarray, point: str
) -> None:
    dep = walk(point, tmp_path)
    assert dep.status() == "finished"
    np.testing.assert_array_equal(dep.final_model(), reference)  # bit for bit
    assert dep.problems() == []
    # Resuming again is a no-op (a supervisor may restart the coordinator blindly).
    again = dep.coordinator(resume=True)
    assert again.wait(timeout=120) == 0, dep.log("coordinator").read_text()
    assert "has finished; nothing to resume" in dep.log("coordinator").read_text()
    np.testing.assert_array_equal(dep.final_model(), reference)
