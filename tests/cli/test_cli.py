"""The CLI end to end, as a user types it."""

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.data.schema import TabularSchema
from fedcare.data.tabular import validate_sites
from tests.data.conftest import site_frame

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
    # Printed before training: the shipped data has a site whose training rows are one class.
    assert "warning: site 'switzerland': all 30 training rows are one class" in result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["sites"]] == ["cleveland", "hungarian", "switzerland", "va"]
    # The warning stays with the results: in metrics.json and as an alert in the report.
    (warning,) = metrics["study"]["data_warnings"]
    assert warning.startswith("site 'switzerland': all 30 training rows are one class")
    report = (tmp_path / "out" / "report.html").read_text()
    assert len(report) > 10_000
    assert "Data warnings" in report and "all 30 training rows are one class" in report


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


def test_coordinator_start_help_documents_the_approval_deadline():
    result = runner.invoke(app, ["coordinator", "start", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # help panels wrap in boxes
    assert "--approval-timeout" in text
    assert "Until then no round starts without that site" in text


def test_datasets_describe_tabular_documents_every_schema_key():
    result = runner.invoke(app, ["datasets", "describe", "tabular"])
    assert result.exit_code == 0, result.output
    for key in (
        "target.column",
        "target.positive",
        "target.negative",
        "target.classes",
        "numeric (numbers",
        "categories",
        "min, max",
        "required",
        "split_column",
        "test_fraction",
        "seed",
        "missing_indicator",
        "imputed with the mean of the training rows",
        "all one class",
    ):
        assert key in result.output, key
    assert "positive: [1]" in result.output and "negative: [0]" in result.output


def hospital_export(path):
    """A small clinical table: numbers with gaps, a text column, a 0/1 outcome, an id."""
    frame = site_frame(0, 60)
    frame["outcome"] = (frame["outcome"] == "yes").astype(int)
    frame["patient"] = [f"P{i:04d}" for i in range(60)]
    frame.loc[[2, 9], "age"] = None
    frame.to_csv(path, index=False)
    return path


def test_datasets_schema_drafts_a_schema_that_validates_against_its_file(tmp_path):
    csv = hospital_export(tmp_path / "north.csv")
    out = tmp_path / "schema.yaml"
    result = runner.invoke(
        app, ["datasets", "schema", str(csv), "--target", "outcome", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "check the lines marked CHECK" in result.output
    schema = TabularSchema.load(out)
    assert schema.target.class_index == {"0": 0, "1": 1}
    features = {f.name: f for f in schema.features}
    assert {n: f.type for n, f in features.items()} == {
        "age": "numeric",
        "smoker": "binary",
        "ward": "categorical",
        "bmi": "numeric",
    }
    assert features["ward"].categories == ["cardio", "icu"]
    # One hospital's range is a comment to check, never a rule for every site.
    assert features["age"].min is None and features["age"].max is None
    text = out.read_text()
    assert "# 20 to 89 in this file; 2 missing; CHECK: add min/max valid at every site" in text
    assert "patient" in text.split("features:")[1].split("\n  # - ")[1]  # an id, left out
    assert validate_sites(schema, {"north": csv}).ok
    again = runner.invoke(app, ["datasets", "schema", str(csv), "--out", str(out)])
    assert again.exit_code == 2 and "exists; pass --force" in again.output


def test_datasets_schema_prints_yaml_and_names_a_misspelled_target(tmp_path):
    csv = hospital_export(tmp_path / "north.csv")
    printed = runner.invoke(app, ["datasets", "schema", str(csv)])
    assert printed.exit_code == 0
    assert yaml.safe_load(printed.output)["target"]["column"] == "outcome"
    assert "CHECK: guessed from its name 'outcome'" in printed.output
    wrong = runner.invoke(app, ["datasets", "schema", str(csv), "--target", "Outcome"])
    assert wrong.exit_code == 2
    assert "--target 'Outcome' is not a column of the file; did you mean 'outcome'?" in wrong.output


def test_coordinator_start_refuses_a_folder_with_simulated_results_before_writing(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(SMALL_STUDY)
    out = tmp_path / "out"
    assert runner.invoke(app, ["simulate", str(config), "--out", str(out)]).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    result = runner.invoke(
        app,
        ["coordinator", "start", "--study", str(config), "--out", str(out), "--insecure",
         "--address", "127.0.0.1:0"],
    )  # fmt: skip
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "holds a simulated study's results" in text and f"--out {out}-deployed" in text
    assert sorted(p.name for p in out.iterdir()) == before  # no plan, run store or audit
