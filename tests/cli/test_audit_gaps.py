"""``fedcare audit verify`` on a study's audit.log that lost entries, at the end too.

The hash chain cannot tell a log cut after entry n from one that only ever had n entries;
the study folder's runs.db can (the head it recorded after each append, and the runs,
rounds and counted updates it holds), and verify says what is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.runtime.coordinator import CoordinatorOptions
from tests.net.test_coordinator_driver import Deployed

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished two-round heart run's study folder, and its coordinator's public key."""
    root = tmp_path_factory.mktemp("gaps")
    run = Deployed(root / "study", CoordinatorOptions(eval_timeout_s=30.0), broken={})
    run.run()
    key = root / "coordinator.pub"
    key.write_bytes(
        run.driver.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return run.folder, key


def _verify(folder: Path, key: Path) -> tuple[int, str]:
    result = runner.invoke(
        app, ["audit", "verify", str(folder / "audit.log"), "--key", f"coordinator={key}"]
    )
    return result.exit_code, " ".join(result.output.split())


def _copy(folder: Path, tmp_path: Path) -> Path:
    study = tmp_path / "study"
    shutil.copytree(folder, study)
    return study


def _cut(log: Path, entries: int) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-entries]))


def test_an_intact_study_log_verifies_against_its_run_store(finished: tuple[Path, Path]) -> None:
    code, output = _verify(*finished)
    assert code == 0, output
    assert "cross-checked with:" in output and "runs.db" in output


def test_a_log_cut_at_the_end_no_longer_verifies_and_says_what_is_missing(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, key = finished
    study = _copy(folder, tmp_path)
    total = len((study / "audit.log").read_bytes().splitlines())
    _cut(study / "audit.log", 1)  # the run_finished entry: the chain alone still holds

    code, output = _verify(study, key)
    assert code == 1, output
    assert f"entry {total - 1} is missing from the end of the log" in output
    assert f"recorded {total} entries" in output and f"the log holds {total - 1}" in output
    assert (
        "run 'run-1' is finished in the run store (run_finished), but the audit log has no entry for it"
        in output
    )


def test_a_log_that_lost_a_finished_round_names_the_round_and_its_updates(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, key = finished
    study = _copy(folder, tmp_path)
    log = study / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    # Everything from round 2's first update on: as if the disk had dropped that round.
    cut = next(
        i for i, line in enumerate(lines) if b'"update_accepted"' in line and b'"round":1' in line
    )
    log.write_bytes(b"".join(lines[:cut]))

    code, output = _verify(study, key)
    assert code == 1, output
    assert "missing from the end of the log" in output
    assert (
        "run 'run-1' round 2 finished (round_completed), but the audit log has no entry" in output
    )
    for site in ("cleveland", "hungarian", "switzerland", "va"):
        assert f"round 2 counted the update of site '{site}' (update_accepted)" in output
