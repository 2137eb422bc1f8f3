"""The CLI end to end, as a user types it."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedcare.cli.main import app

runner = CliRunner()

SMALL_STUDY = """
name: small-heart
dataset: {name: heart-disease}
model: {name: logistic}
seeds: [0]
rounds: 2
local: {optimizer: sgd, lr: 0.02, batch_size: 16}
strategies:
  - name: fedavg
  - name: scaffold
"""


def test_simulate_runs_a_small_study_and_writes_its_folder(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(SMALL_STUDY)
    result = runner.invoke(app, ["simulate", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "scaffold" in result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["sites"]] == ["cleveland", "hungarian", "switzerland", "va"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_report_rerenders_from_metrics(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(SMALL_STUDY)
    runner.invoke(app, ["simulate", str(config), "--out", str(tmp_path / "out")])
    (tmp_path / "out" / "report.html").unlink()
    result = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "nope.yaml"], "config file not found"),
        (["report", "."], "no metrics.json"),
        (["datasets", "describe", "hart-disease"], "did you mean 'heart-disease'"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_misspelled_config_key_from_the_real_executable(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("rounds: 2\nlocal: {lrr: 0.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedcare.cli.main", "simulate", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown key 'local.lrr'; did you mean 'lr'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_datasets_list_and_describe():
    listed = runner.invoke(app, ["datasets", "list"])
    assert listed.exit_code == 0
    assert "heart-disease" in listed.output and "breastmnist" in listed.output
    described = runner.invoke(app, ["datasets", "describe", "heart-disease", "--json"])
    assert described.exit_code == 0
    assert json.loads(described.output)["sites"][0]["train"] == 199


def test_help_everywhere():
    for args in ([], ["demo"], ["simulate"], ["datasets"], ["report"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0
        assert "Usage" in result.output
