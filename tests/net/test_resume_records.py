"""Resume only from a checkpoint the run store and audit log agree with.

A heart run (driver, run store, audit log and four site machines in this process, as in
test_coordinator_driver) is cut at a named fault point: the point raises instead of
killing the process (``FEDCARE_FAULT=...:enospc`` semantics), and the driver, with
everything it held in memory, is dropped as a kill -9 would. ``resume_run`` must then
reach the uninterrupted model bit for bit with store, checkpoint and audit log agreeing,
or refuse a checkpoint that was changed, deleted or rolled back, naming the file.
tests/e2e/test_crash_points.py does the same with real processes and real kills.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedcare.core import faults
from fedcare.net.coordinator_server import Security, resume_run
from fedcare.net.reconcile import disagreements
from fedcare.runtime.checkpoint import CHECKPOINT_NAME, CheckpointError
from fedcare.runtime.coordinator import CoordinatorOptions
from tests.net import test_coordinator_driver as harness

RUN = "run-1"
OPTIONS = CoordinatorOptions(round_timeout_s=30.0, eval_timeout_s=30.0, start_grace_s=30.0)


@pytest.fixture(autouse=True)
def three_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(harness.HEART, "rounds", 3)


class CrashedError(Exception):
    """The driver died here (its memory is gone; only what it wrote survives)."""


def drive(run: harness.Deployed, until=lambda: False) -> None:
    """Pass messages until the run ends or ``until()``; a fault point's OSError is a crash
    (raised through, or caught by the driver's storage-failure stop: either way the driver
    is dropped with what it held in memory)."""
    try:
        for name, site in run.sites.items():
            run.driver.connected(run.links[name])
            run.from_site(name, site.start(time.monotonic()), None)
        for _ in range(10_000):
            if run.driver.storage_failure is not None:  # the driver stopped at the point
                raise CrashedError(str(run.driver.storage_failure))
            if run.driver.finished.is_set() or until():
                return
            if not run.queue:
                run.driver.tick()
                continue
            name, env = run.queue.popleft()
            replies = run.sites[name].handle(env.from_peer("coordinator"), time.monotonic())
            run.from_site(name, replies, None)
    except OSError as exc:
        raise CrashedError(str(exc)) from exc
    finally:
        run.driver.store.close()


def resume(run: harness.Deployed) -> None:
    """The coordinator restarts: its streams are gone, the sites (same agents) reconnect."""
    run.queue.clear()
    run.driver = resume_run(run.folder, RUN, Security(None), log=run.lines.append)
    drive(run)


def final_model(folder: Path) -> np.ndarray:
    return load_file(str(folder / "deploy" / RUN / "model.safetensors"))["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(harness.HEART, "rounds", 3)
        run = harness.Deployed(tmp_path_factory.mktemp("ref") / "study", OPTIONS, broken={})
        drive(run)
    return final_model(run.folder)


@pytest.mark.parametrize(
    "point",
    [
        "coordinator.checkpoint.renamed@2",  # round 1 aggregated, before its audit entry
        "coordinator.checkpoint.renamed@3",  # round 2 finished, before audit and store
        "coordinator.store.round_finished@2",  # round 2 in the store, nothing sent yet
        "coordinator.send.eval_request@5",  # round 2's evaluation half sent
        "coordinator.audit.appended@20",
        "coordinator.result.written@1",  # the run's end: result.json written, store not yet
    ],
)
def test_a_crash_at_a_persistence_point_resumes_to_the_same_model_with_records_agreeing(
    tmp_path: Path, reference: np.ndarray, point: str
) -> None:
    run = harness.Deployed(tmp_path / "study", OPTIONS, broken={})
    faults.reset_for_tests(f"{point}:enospc")
    try:
        with pytest.raises(CrashedError):
            drive(run)
    finally:
        faults.reset_for_tests(None)
    resume(run)
    np.testing.assert_array_equal(final_model(run.folder), reference)
    assert disagreements(run.folder, RUN) == []
    # The final evaluation survives too (a run resumed from its last checkpoint reports).
    result = json.loads((run.folder / "deploy" / RUN / "result.json").read_text())
    assert sorted(result["final_counts"]) == sorted(run.sites)


def interrupted_after_round(tmp_path: Path, rounds: int) -> harness.Deployed:
    """A run whose coordinator stopped (no clean-up) once ``rounds`` rounds finished."""
    run = harness.Deployed(tmp_path / "study", OPTIONS, broken={})
    drive(run, until=lambda: len(run.driver.machine.history) >= rounds)
    return run


def checkpoint_of(run: harness.Deployed) -> Path:
    return run.folder / "deploy" / RUN / CHECKPOINT_NAME


def refused(run: harness.Deployed) -> str:
    with pytest.raises(CheckpointError) as caught:
        resume_run(run.folder, RUN, Security(None), log=run.lines.append)
    message = str(caught.value)
    assert str(checkpoint_of(run)) in message
    return message


def test_a_flipped_bit_in_the_weights_is_refused(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    data = bytearray(checkpoint_of(run).read_bytes())
    data[-3] ^= 0x01  # the last bytes are array data
    checkpoint_of(run).write_bytes(bytes(data))
    assert "was changed or damaged: its content hashes to" in refused(run)


def test_an_edited_header_cannot_rename_a_site_in_the_history(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    data = checkpoint_of(run).read_bytes()
    assert b"hungarian" in data
    checkpoint_of(run).write_bytes(data.replace(b"hungarian", b"hungariaN"))
    assert "was changed or damaged" in refused(run)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    data = checkpoint_of(run).read_bytes()
    checkpoint_of(run).write_bytes(data[: len(data) // 2])
    assert "is unreadable (truncated or damaged?)" in refused(run)


def test_a_deleted_checkpoint_is_refused_naming_what_the_audit_log_expects(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    checkpoint_of(run).unlink()
    message = refused(run)
    assert "is missing: the audit log records round 1 (finished), digest" in message


def test_a_rolled_back_checkpoint_is_refused(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    old = tmp_path / "backup.safetensors"
    shutil.copy(checkpoint_of(run), old)
    resume(run)  # the run goes on to its end... then someone restores the old file
    shutil.copy(old, checkpoint_of(run))
    from fedcare.net.store import RunStore

    with RunStore.in_folder(run.folder) as store:
        store.set_status(RUN, "running")  # as if the run had stopped again
    message = refused(run)
    assert "holds round 1 (finished)" in message and "round 3 (finished)" in message
    assert "older checkpoint of this run (rolled back)" in message


def test_stale_temporary_checkpoint_files_are_removed_on_resume(tmp_path: Path) -> None:
    run = interrupted_after_round(tmp_path, 1)
    stale = checkpoint_of(run).parent / ".checkpoint-abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resume(run)
    assert not stale.exists()
    assert any("a checkpoint write a crash interrupted" in line for line in run.lines)
