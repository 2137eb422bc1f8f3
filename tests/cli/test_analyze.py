"""``fedcare analyze``, ``fedcare report`` on an analysis folder, and the Python API."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from fedcare.api import Analysis
from fedcare.cli.main import app
from tests.runtime.query_kinds import moments_kind  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("moments_kind")

runner = CliRunner()
YAML = """\
name: heart-ages
dataset: {name: heart-disease}
split: train
disclosure: {min_cell: 5}
analyses:
  - {kind: moments, id: ages, params: {column: age}}
"""


def test_analyze_writes_the_folder_and_report_rerenders_it(tmp_path):
    config = tmp_path / "analysis.yaml"
    config.write_text(YAML)
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan_hash = json.loads((out / "plan.json").read_text())["hash"]
    assert f"Plan hash: {plan_hash}" in result.output
    assert "Mean and variance (ages): done" in result.output
    (out / "report.html").unlink()
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0, again.output
    assert "fedcare analysis report" in (out / "report.html").read_text()


def test_analyze_refuses_a_misspelled_key_in_one_line(tmp_path):
    config = tmp_path / "analysis.yaml"
    config.write_text(YAML.replace("split: train", "splits: train"))
    result = runner.invoke(app, ["analyze", str(config)])
    assert result.exit_code == 2
    assert "unknown key 'splits'; did you mean 'split'" in result.output


def test_analyze_help_shows_an_example():
    result = runner.invoke(app, ["analyze", "--help"])
    assert result.exit_code == 0
    assert "disclosure: {min_cell: 5}" in result.output


def test_the_python_api_runs_the_same_analysis_as_the_yaml(tmp_path):
    config = tmp_path / "analysis.yaml"
    config.write_text(YAML)
    from_file = Analysis.from_yaml(config).run(tmp_path / "a")
    built = Analysis("heart-ages", dataset="heart-disease", split="train")
    in_code = built.add("moments", id="ages", column="age").run(tmp_path / "b")
    assert in_code.plan_hash == from_file.plan_hash
    assert in_code.result("ages") == from_file.result("ages")
    assert in_code.result("ages")["summary"]["n"] > 0
    with pytest.raises(KeyError, match=r"no analysis 'km' in this run; it has \['ages'\]"):
        in_code.result("km")


def test_coordinator_start_refuses_training_options_for_an_analysis_file(tmp_path):
    config = tmp_path / "analysis.yaml"
    config.write_text(YAML)
    result = runner.invoke(
        app,
        [
            "coordinator", "start", "--study", str(config), "--insecure",
            "--address", "127.0.0.1:0", "--rounds", "3", "--out", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--rounds: training options; an analysis file deploys as a query job" in result.output
    assert not (tmp_path / "out").exists()


def test_site_query_names_what_is_wrong_with_its_data_option(tmp_path):
    result = runner.invoke(
        app,
        [
            "site", "query", "--coordinator", "127.0.0.1:1", "--insecure", "--name", "north",
            "--data", "tcga-brca", "--state", str(tmp_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--data 'tcga-brca': give DATASET:SITE (e.g. tcga-brca:northeast)" in result.output
    result = runner.invoke(
        app,
        [
            "site", "query", "--coordinator", "127.0.0.1:1", "--insecure", "--name", "north",
            "--data", "tcga-brca:north", "--state", str(tmp_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "dataset 'tcga-brca' has no site 'north' (its sites: northeast" in result.output


def test_the_help_example_is_a_valid_analysis_file():
    # The example in `fedcare analyze --help` must run under its own min_cell of 5.
    from fedcare.cli.analyze import HELP
    from fedcare.study.analysis_config import parse_analysis_config

    block = HELP.split("Example analysis.yaml")[1].split("\n\n")[1]
    text = "\n".join(line[4:] for line in block.splitlines()).replace("\\[", "[")
    config = parse_analysis_config(yaml.safe_load(text))
    assert [s.kind for s in config.specs()] == ["describe", "km", "cox"]
