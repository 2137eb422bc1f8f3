"""`fedcare simulate --backend/--address`: mistakes are one clear line and exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli.main import app

runner = CliRunner()


def _study(tmp_path: Path) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(
        "name: s\ndataset: {name: heart-disease}\nmodel: {name: logistic}\n"
        "rounds: 1\nstrategies: [{name: fedavg}]\n"
    )
    return config


def test_an_unknown_backend_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["simulate", str(_study(tmp_path)), "--out", str(out), "--backend", "spark"]
    )
    assert result.exit_code == 2
    assert "unknown backend 'spark'; expected one of: inprocess, ray" in result.output
    assert not out.exists()


def test_an_address_needs_the_ray_backend(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(_study(tmp_path)), "--address", "10.0.0.5:6379"])
    assert result.exit_code == 2
    assert "needs --backend ray (found --backend inprocess)" in result.output
