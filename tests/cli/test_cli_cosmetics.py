"""The CLI's looks: help without type tags, readable dataset facts, errors without a
blank line in front."""

import re
from collections.abc import Iterator
from typing import Any

import typer.main
from typer.testing import CliRunner

from fedcare.cli.main import app

runner = CliRunner()


def _all_commands(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _all_commands(sub, [*path, name])


def test_help_shows_no_type_tags_on_any_command():
    # Before: "--help <bool>", "--out <path>", "--key <list[str]>" on every screen.
    commands = list(_all_commands(typer.main.get_command(app), []))
    assert ["audit", "verify"] in commands and ["site", "start"] in commands

    for path in commands:
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        assert re.search(r"<(bool|path|str|int|float|list)\b[^>]*>", result.output) is None, (
            path,
            result.output,
        )
    verify = runner.invoke(app, ["audit", "verify", "--help"], terminal_width=200).output
    assert re.search(r"--ca-dir\s+Study CA folder", verify)


def test_datasets_describe_prints_sites_as_a_table():
    result = runner.invoke(app, ["datasets", "describe", "heart-disease"], terminal_width=200)

    assert result.exit_code == 0
    assert "{'name'" not in result.output and "['" not in result.output
    assert "classes: no disease, disease" in result.output
    header = next(line for line in result.output.splitlines() if "train rows by class" in line)
    assert "test rows" in header
    cleveland = next(line for line in result.output.splitlines() if "│ cleveland" in line)
    assert re.search(r"cleveland\s*│\s*199\s*│\s*104\s*│\s*108 / 91\s*│", cleveland)


def test_an_error_before_training_is_not_preceded_by_a_blank_line(tmp_path):
    # The progress display used to start (and, off a terminal, print an empty line) before
    # the data loaded.
    config = tmp_path / "study.yaml"
    config.write_text(
        "name: x\ndataset: {name: heart-disease, params: {bogus: 1}}\nmodel: {name: logistic}\n"
        "baselines: [local]\n"
    )

    result = runner.invoke(app, ["simulate", str(config)])

    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0].startswith("Study x: dataset heart-disease")
    assert lines[1].startswith("error: dataset 'heart-disease': got an unexpected keyword")
    assert "" not in lines
