"""``fedcare audit verify studies/NAME/audit.log``, as the README shows it: the keys come
from the signers file the coordinator keeps beside its log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.deploy import initial_model
from fedcare.cli.main import app
from fedcare.core.records import TrainSpec
from fedcare.net.audit_signers import SIGNERS_FILE, fingerprint
from fedcare.net.coordinator_server import Security, new_run
from fedcare.net.tls import CA_CERT, REVOKED, TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.rounds import RunPlan

runner = CliRunner()


def _plan() -> RunPlan:
    return RunPlan(
        sites=("north", "south"),
        strategy="fedavg",
        spec=TrainSpec(lr=0.02, epochs=1, batch_size=16),
        rounds=1,
        seed=0,
        input_shape=(3,),
        num_classes=2,
        study="clinics",
    )


def _start_run(tmp_path: Path, ca: Path, run_id: str = "run-1") -> Path:
    """A coordinator registers a run (its first audit entry); returns the study folder."""
    bundle_dir = tmp_path / "coordinator"
    if not bundle_dir.exists():
        issue_bundle(ca, "coordinator", bundle_dir, "coordinator")
    plan = _plan()
    folder = tmp_path / "studies" / "clinics"
    security = Security(TlsBundle.load(bundle_dir), ca / REVOKED)
    new_run(folder, run_id, plan, initial_model(plan), security, log=lambda _: None)
    return folder


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_study_ca(tmp_path / "ca", "clinics")
    return tmp_path / "ca"


def test_verify_needs_only_the_log_the_coordinator_wrote(tmp_path, ca):
    folder = _start_run(tmp_path, ca)
    _start_run(tmp_path, ca, run_id="run-2")  # a second run adds no duplicate signer

    result = runner.invoke(app, ["audit", "verify", str(folder / "audit.log")], terminal_width=300)

    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "signers coordinator from" in result.output
    assert fingerprint((ca / CA_CERT).read_bytes()) in result.output
    assert (folder / SIGNERS_FILE).read_text().count("BEGIN CERTIFICATE") == 2  # CA + coordinator


def test_verify_with_the_signers_file_still_finds_tampering(tmp_path, ca):
    log = _start_run(tmp_path, ca) / "audit.log"
    entry = json.loads(log.read_text().splitlines()[0])
    entry["body"]["sites"] = ["north"]
    log.write_text(json.dumps(entry) + "\n")

    result = runner.invoke(app, ["audit", "verify", str(log)], terminal_width=300)

    assert result.exit_code == 1
    assert "tampered" in result.output and "was edited" in result.output


def test_a_signer_not_issued_by_the_ca_beside_it_is_refused(tmp_path, ca):
    folder = _start_run(tmp_path, ca)
    other = init_study_ca(tmp_path / "other-ca", "clinics")
    signers = folder / SIGNERS_FILE
    forged = (other / CA_CERT).read_text() + signers.read_text().split(
        "-----END CERTIFICATE-----\n", 1
    )[1]
    signers.write_text(forged)

    result = runner.invoke(app, ["audit", "verify", str(folder / "audit.log")], terminal_width=300)

    assert result.exit_code == 2
    assert "the certificate of 'coordinator' was not issued by a CA certificate" in result.output
    assert "pass --ca-dir" in result.output


def test_without_signers_or_key_options_the_error_says_what_to_pass(tmp_path, ca):
    log = _start_run(tmp_path, ca) / "audit.log"
    (log.parent / SIGNERS_FILE).unlink()

    result = runner.invoke(app, ["audit", "verify", str(log)], terminal_width=300)

    assert result.exit_code == 2
    assert f"no public keys to verify '{log}' with: there is no {SIGNERS_FILE} beside it" in (
        result.output
    )
    for flag in ("--ca-dir CA_FOLDER", "--bundle BUNDLE_FOLDER", "--key NAME=FILE"):
        assert flag in result.output
    with_ca = runner.invoke(app, ["audit", "verify", str(log), "--ca-dir", str(ca)])
    assert with_ca.exit_code == 0, with_ca.output
