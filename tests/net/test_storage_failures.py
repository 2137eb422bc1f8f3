"""Storage that fails under a running coordinator: a full disk, an immutable runs.db.

Each test stages the failure at a named fault point (``fedcare.core.faults``, ":enospc":
the write raises ENOSPC as a full disk would) or on a real small tmpfs, in the in-process
deployment of ``test_coordinator_driver`` (driver, run store, audit log and four heart
sites). A run that cannot make a fact durable must stop with a message naming the file,
send nothing that depends on it, lose nothing already written, and resume, once space is
back, to the model of a run that never failed.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedcare.cli.deploy import initial_model
from fedcare.core import faults
from fedcare.core.storage import StorageError
from fedcare.net.audit_crosscheck import cross_check
from fedcare.net.coordinator_server import Security, resume_run, save_initial
from fedcare.net.storage_checks import check_study_folder
from fedcare.net.store import RunStore
from fedcare.runtime.audit import verify
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.envelope import Envelope
from tests.net.test_coordinator_driver import Deployed

OPTIONS = CoordinatorOptions(eval_timeout_s=30.0)


@pytest.fixture(autouse=True)
def no_fault_left() -> Iterator[None]:
    yield
    faults.reset_for_tests(None)


class Recorded(Deployed):
    """The in-process deployment, remembering every message the coordinator sent."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, OPTIONS, broken={})
        self.sent: list[Envelope] = []
        self.keys = [self.driver.signing_key.public_key()]
        save_initial(folder, "run-1", initial_model(self.driver.machine.plan))  # as the CLI does
        for link in self.links.values():
            send = link.send

            def recording(env: Envelope, send=send) -> None:  # type: ignore[no-untyped-def]
                self.sent.append(env)
                send(env)

            link.send = recording  # type: ignore[method-assign]

    def resume(self) -> None:
        """``coordinator resume`` in this process; the sites' agents reconnect."""
        self.queue.clear()
        self.driver = resume_run(self.folder, "run-1", Security(None), log=self.lines.append)
        self.keys.append(self.driver.signing_key.public_key())
        self.run()

    def model(self) -> np.ndarray:
        return np.asarray(self.driver.outcome().final_params)

    def agreement(self) -> list[str]:
        """Problems between the audit log and the run store (none: they agree)."""
        log = self.folder / "audit.log"
        problems = [str(p) for p in verify(log, {"coordinator": self.keys}).problems]
        with RunStore.in_folder(self.folder) as store:
            return problems + [str(p) for p in cross_check(log, store)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    run = Recorded(tmp_path_factory.mktemp("uninterrupted") / "study")
    run.run()
    return run.model()


def _stopped(run: Recorded) -> str:
    (line,) = [text for text in run.lines if text.startswith("STOPPED: ")]
    return line


# Each fault point, the hit that fails, and the file the message must name.
DISK_FULL_AT = [
    ("coordinator.store.record_participant@6:enospc", "runs.db"),
    ("coordinator.store.record_event@20:enospc", "runs.db"),
    ("coordinator.store.start_round@2:enospc", "runs.db"),
    ("coordinator.store.finish_round@1:enospc", "runs.db"),
    ("coordinator.store.record_audit_head@9:enospc", "runs.db"),
    ("coordinator.audit.append@8:enospc", "audit.log"),
]


@pytest.mark.parametrize(("fault", "file"), DISK_FULL_AT)
def test_a_full_disk_stops_the_run_naming_the_file_and_resume_reaches_the_same_model(
    tmp_path: Path, uninterrupted: np.ndarray, fault: str, file: str
) -> None:
    run = Recorded(tmp_path / "study")
    faults.reset_for_tests(fault)
    before = len(run.sent)
    run.run()  # ends when the driver stops

    outcome = run.driver.outcome()
    assert outcome.status == "stopped"
    line = _stopped(run)
    assert f"{run.folder / file}': no space left on the device" in line
    assert "free space on the file system of" in line
    assert "fedcare coordinator resume --out" in line
    assert run.sent[before:], "the run never got going before the disk filled"
    # Nothing already written is lost or torn, and the store and log agree.
    assert run.agreement() == []
    with RunStore.in_folder(run.folder) as store:
        finished = [r.round for r in store.rounds("run-1") if r.status == "finished"]
        assert store.run("run-1").status != "finished"
    trained = {env.round for env in run.sent if env.kind == "train_request"}
    assert trained <= set(finished) | {max(finished, default=-1) + 1}, (
        "a site was asked to train a round after one whose end never became durable"
    )

    faults.reset_for_tests(None)  # space is free again
    run.resume()
    assert run.driver.outcome().status == "finished"
    np.testing.assert_array_equal(run.model(), uninterrupted)
    assert run.agreement() == []


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    run = Recorded(tmp_path / "study")
    # Two checkpoints a round (aggregated, then finished): the 3rd write is round 2's first.
    faults.reset_for_tests("coordinator.checkpoint.write@3:enospc")
    run.run()

    checkpoint = run.folder / "deploy" / "run-1" / "checkpoint.safetensors"
    assert f"cannot write '{checkpoint}': no space left" in _stopped(run)
    from fedcare.runtime.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint.parent).extra["history"][-1]["round"] == 1
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "checkpoint.safetensors",
        "initial.npy",
        "plan.json",
    ], "a temporary checkpoint file was left behind"
    assert run.driver.outcome().status == "stopped"


def test_a_full_audit_log_append_leaves_the_file_byte_for_byte_as_it_was(tmp_path: Path) -> None:
    run = Recorded(tmp_path / "study")
    log = run.folder / "audit.log"
    before = log.read_bytes()
    faults.reset_for_tests("coordinator.audit.append@1:enospc")
    with pytest.raises(OSError) as raised:
        run.driver.audit.append(
            "round_started", "coordinator", {"run_id": "run-1"}, run.driver.signing_key
        )
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(log)
    assert log.read_bytes() == before
    faults.reset_for_tests(None)
    run.driver.audit.append(
        "round_started", "coordinator", {"run_id": "run-1"}, run.driver.signing_key
    )
    assert verify(log, {"coordinator": run.keys}).ok


# -- a real small file system ------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(
            "mounting a small tmpfs needs root and mount(8); the fault-point tests cover the same paths"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the fault-point tests cover the same paths"
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    _mount_tmpfs(where, "16m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the file system to the last byte; the ballast file frees it again."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        size = 1 << 16
        while size:
            try:
                fh.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    return ballast


def test_a_real_full_file_system_mid_run_then_space_freed_resumes_to_the_same_model(
    small_disk: Path, uninterrupted: np.ndarray
) -> None:
    run = Recorded(small_disk / "study")
    ballast: list[Path] = []

    def fill_when_round_2_is_sent(env: Envelope) -> None:
        if env.kind == "train_request" and env.round == 1 and not ballast:
            ballast.append(_fill(small_disk))

    for link in run.links.values():
        send = link.send

        def then_fill(env: Envelope, send=send) -> None:  # type: ignore[no-untyped-def]
            send(env)
            fill_when_round_2_is_sent(env)

        link.send = then_fill  # type: ignore[method-assign]
    run.run()

    assert ballast, "the disk was never filled"
    assert run.driver.outcome().status == "stopped"
    assert "no space left on the device" in _stopped(run)
    ballast[0].unlink()  # the operator frees space
    assert run.agreement() == []
    run.resume()
    assert run.driver.outcome().status == "finished"
    np.testing.assert_array_equal(run.model(), uninterrupted)
    assert run.agreement() == []


# -- storage that cannot be written ------------------------------------------------------


def _chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} is not available here ({done.stderr.strip()})")


def test_an_immutable_runs_db_is_refused_before_anything_starts(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    RunStore.in_folder(folder).close()
    db = folder / "runs.db"
    _chattr("+i", db)
    try:
        with pytest.raises(StorageError) as raised:
            check_study_folder(folder)
    finally:
        _chattr("-i", db)
    assert str(raised.value).startswith(f"cannot write the study folder's runs.db '{db}': ")
    assert "immutable" in str(raised.value) and "chattr -i" in str(raised.value)


def test_an_audit_log_made_immutable_mid_run_stops_the_run_like_a_full_disk(
    tmp_path: Path, uninterrupted: np.ndarray
) -> None:
    run = Recorded(tmp_path / "study")
    log = run.folder / "audit.log"
    locked: list[bool] = []

    def lock_after_round_1(line: str) -> None:
        if line.startswith("round 1 done") and not locked:
            _chattr("+i", log)
            locked.append(True)

    run.lines = _Lines(run.lines, lock_after_round_1)
    run.driver.log = run.lines.append
    try:
        run.run()
    finally:
        if locked:
            _chattr("-i", log)
    assert f"'{log}': the file cannot be changed (immutable" in _stopped(run)
    assert run.agreement() == []
    run.resume()
    np.testing.assert_array_equal(run.model(), uninterrupted)


class _Lines(list[str]):
    def __init__(self, lines: list[str], hook) -> None:  # type: ignore[no-untyped-def]
        super().__init__(lines)
        self.hook = hook

    def append(self, line: str) -> None:
        super().append(line)
        self.hook(line)


def test_coordinator_resume_refuses_an_immutable_runs_db_before_writing_anything(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from fedcare.cli.main import app

    folder = tmp_path / "study"
    RunStore.in_folder(folder).close()
    db = folder / "runs.db"
    before = sorted(p.name for p in folder.iterdir())
    _chattr("+i", db)
    try:
        result = CliRunner().invoke(
            app,
            ["coordinator", "resume", "run-1", "--out", str(folder), "--insecure",
             "--address", "127.0.0.1:0"],
        )  # fmt: skip
    finally:
        _chattr("-i", db)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert f"cannot write the study folder's runs.db '{db}'" in output
    assert sorted(p.name for p in folder.iterdir()) == before
