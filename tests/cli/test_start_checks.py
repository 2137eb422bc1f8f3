"""A refused start writes nothing: every option (address, security, bundle, CA, study,
model, folder) is checked before the study folder or the site folder is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app

runner = CliRunner()

STUDY = """\
name: checks
dataset: {name: heart-disease}
model: {name: MODEL}
seeds: [0]
rounds: 1
baselines: []
strategies: [{name: fedavg}]
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what 'left exactly as it was' compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def study_folder(tmp_path) -> Path:
    """A study folder that already holds something of its owner's."""
    folder = tmp_path / "studies" / "checks"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("kept as is\n")
    return folder


def start(tmp_path: Path, folder: Path, *options: str, model: str = "logistic"):
    (tmp_path / "study.yaml").write_text(STUDY.replace("MODEL", model))
    args = ["coordinator", "start", "--study", str(tmp_path / "study.yaml"), "--out", str(folder)]
    return runner.invoke(app, [*args, *options])


@pytest.mark.parametrize(
    ("options", "model", "message"),
    [
        (
            ["--insecure", "--address", "0.0.0.0:0"],
            "logistic",
            "--insecure is only allowed on loopback",
        ),
        (["--insecure", "--address", "localhost:99999"], "logistic", "port 99999 is out of range"),
        (["--insecure", "--address", "local host:1"], "logistic", "is not a host name"),
        (["--address", "127.0.0.1:0"], "logistic", "--bundle is required"),
        (
            ["--bundle", "no-such-bundle"],
            "logistic",
            "bundle folder 'no-such-bundle' does not exist",
        ),
        (
            ["--insecure", "--address", "127.0.0.1:0"],
            "nowhere_xyz.models:Net",
            "cannot import module 'nowhere_xyz.models'",
        ),
    ],
    ids=[
        "insecure-off-loopback",
        "port-out-of-range",
        "bad-host",
        "no-bundle",
        "missing-bundle",
        "model-fails",
    ],
)
def test_a_refused_coordinator_start_leaves_the_study_folder_exactly_as_it_was(
    tmp_path, study_folder, options, model, message
):
    before = snapshot(study_folder)
    result = start(tmp_path, study_folder, *options, model=model)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert snapshot(study_folder) == before  # no runs.db, no audit.log, no deploy/ plan files
    assert "Traceback" not in result.output


def test_a_study_folder_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    target = tmp_path / "results"
    target.write_text("not a folder")
    result = start(tmp_path, target, "--insecure", "--address", "127.0.0.1:0")
    assert result.exit_code == 2
    assert f"study folder '{target}' is a file, not a folder" in " ".join(result.output.split())
    assert target.read_text() == "not a folder"


def test_a_refused_site_start_writes_nothing_to_its_state_folder(tmp_path):
    state = tmp_path / "site"
    base = ["site", "start", "--data", "heart-disease:cleveland", "--state", str(state)]
    budget = ["--budget-epsilon", "3", "--budget-delta", "1e-5"]  # would create the ledger
    for options, message in [
        (
            ["--coordinator", "10.1.2.3:50051", "--insecure", "--name", "cleveland"],
            "--insecure is only allowed on loopback",
        ),
        (
            ["--coordinator", "127.0.0.1:99999", "--insecure", "--name", "cleveland"],
            "port 99999 is out of range; expected 1-65535",
        ),
        (
            ["--coordinator", "127.0.0.1:0", "--insecure", "--name", "cleveland"],
            "port 0 is out of range",
        ),
        (["--coordinator", "127.0.0.1:50051"], "--bundle is required"),
    ]:
        result = runner.invoke(app, [*base, *budget, *options])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
        assert not state.exists()


def test_simulate_refuses_an_empty_study_before_making_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("")
    result = runner.invoke(app, ["simulate", "study.yaml"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert (
        "study.yaml: the study file is empty; a study needs the keys name, dataset, model" in text
    )
    assert not (tmp_path / "studies").exists()


def test_site_pending_says_which_module_a_plan_would_import_and_allow_model_lets_it(tmp_path):
    from fedcare.core.records import TrainSpec
    from fedcare.runtime.approvals import ApprovalStore
    from fedcare.runtime.rounds import RunPlan

    state = tmp_path / "site"
    plan = RunPlan(
        sites=("north",),
        strategy="fedavg",
        spec=TrainSpec(),
        rounds=1,
        seed=0,
        input_shape=(5,),
        num_classes=2,
        model="hospital.models:Net",
    )
    ApprovalStore(state / "approvals.json").request(plan.to_dict(), from_="coordinator")

    shown = " ".join(runner.invoke(app, ["site", "pending", "--state", str(state)]).output.split())
    assert (
        "builds model 'hospital.models:Net': would import module 'hospital.models', NOT on "
        "this site's allow-list (refused; to allow it: fedcare site allow-model "
        f"hospital.models:Net --state {state})" in shown
    )

    added = runner.invoke(
        app, ["site", "allow-model", "hospital.models:Net", "--state", str(state), "--by", "Dr. O"]
    )
    assert added.exit_code == 0, added.output
    shown = " ".join(runner.invoke(app, ["site", "pending", "--state", str(state)]).output.split())
    assert "this site would import module 'hospital.models' (allowed by Dr. O)" in shown
    assert (
        runner.invoke(
            app, ["site", "disallow-model", "hospital.models:Net", "--state", str(state)]
        ).exit_code
        == 0
    )
    gone = runner.invoke(
        app, ["site", "disallow-model", "hospital.models:Net", "--state", str(state)]
    )
    assert gone.exit_code == 2 and "is not on the model allow-list" in gone.output


def test_a_port_another_coordinator_listens_on_is_refused_before_anything_is_written(
    tmp_path, study_folder
):
    import socket

    with socket.socket() as other:  # e.g. yesterday's coordinator, still running
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        before = snapshot(study_folder)
        result = start(tmp_path, study_folder, "--insecure", "--address", f"127.0.0.1:{port}")
    assert result.exit_code == 2, result.output
    assert f"port {port} is already in use on this machine" in " ".join(result.output.split())
    assert snapshot(study_folder) == before
