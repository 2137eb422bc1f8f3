"""`fedcare simulate --resume`: a study killed after a round continues from its checkpoints
and writes the study folder an uninterrupted run writes (the same models, bit for bit)."""

import json
import os
import subprocess
import sys

import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedcare.cli.main import app
from fedcare.cli.progress import StudyProgress
from fedcare.core.faults import KILLED_EXIT
from fedcare.study.config import StudyConfig
from fedcare.study.resume import StudyCheckpoints

runner = CliRunner()

# Server moments (fedadam) and state kept per site (ditto's personal models) must both
# survive the interruption; the local baseline keeps no checkpoint and runs again.
STUDY = """
name: resume-heart
dataset: {name: heart-disease}
model: {name: logistic}
seeds: [0]
rounds: 4
local: {optimizer: sgd, lr: 0.02, batch_size: 16}
baselines: [local]
strategies:
  - name: fedadam
  - name: ditto
"""
TIMINGS = {"wall_time_s", "created"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def simulate(*args: str):
    return runner.invoke(app, ["simulate", *args])


def test_a_study_killed_after_a_round_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = tmp_path / "study.yaml"
    config.write_text(STUDY)
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    # The real CLI process dies after ditto's 2nd round (fedadam's 4 rounds come first).
    env = {**os.environ, "FEDCARE_FAULT": "study.round.checkpointed@6"}
    command = [sys.executable, "-m", "fedcare.cli.main", "simulate", str(config)]
    killed = subprocess.run(
        [*command, "--out", str(interrupted)], env=env, capture_output=True, check=False
    )
    assert killed.returncode == KILLED_EXIT, killed.stderr.decode()[-2000:]
    assert not (interrupted / "metrics.json").exists()
    saved = interrupted / "checkpoints"
    assert {p.name for p in saved.iterdir()} == {"study.json", "fedadam-seed0", "ditto-seed0"}

    trained: list[tuple[str, int]] = []  # the rounds the resumed CLI reports as trained
    report = StudyProgress.on_round

    def recording(self, job, seed, record):
        trained.append((job, record.round))
        report(self, job, seed, record)

    monkeypatch.setattr(StudyProgress, "on_round", recording)
    resumed = simulate(str(config), "--out", str(interrupted), "--resume")
    assert resumed.exit_code == 0, resumed.output
    # fedadam had finished and ditto had done 2 rounds: only ditto's last 2 are trained
    # again (the local baseline keeps no checkpoint and runs whole).
    assert [r for r in trained if r[0] != "local"] == [("ditto", 3), ("ditto", 4)]
    monkeypatch.setattr(StudyProgress, "on_round", report)
    done = simulate(str(config), "--out", str(reference))
    assert done.exit_code == 0, done.output

    for model in sorted((reference / "models").iterdir()):
        want, got = load_file(str(model)), load_file(str(interrupted / "models" / model.name))
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            assert got[name].tobytes() == value.tobytes(), (model.name, name)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (interrupted, reference)]
    assert without_timings(metrics[0]) == without_timings(metrics[1])
    # A complete study folder keeps no checkpoints: there is nothing left to resume.
    assert not saved.exists() and not (reference / "checkpoints").exists()
    again = simulate(str(config), "--out", str(interrupted), "--resume")
    assert again.exit_code == 2
    assert "no checkpoint to resume from" in " ".join(again.output.split())


def test_resume_without_checkpoints_is_refused_with_the_folder_named(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(STUDY)
    result = simulate(str(config), "--out", str(tmp_path / "never-ran"), "--resume")
    assert result.exit_code == 2
    assert "never-ran: no checkpoint to resume from" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_resume_under_a_changed_config_is_refused_naming_what_changed(tmp_path):
    out = tmp_path / "out"
    StudyCheckpoints(out, StudyConfig.model_validate(yaml.safe_load(STUDY))).start()
    changed = STUDY.replace("rounds: 4", "rounds: 5").replace("lr: 0.02", "lr: 0.05")
    config = tmp_path / "study.yaml"
    config.write_text(changed)
    result = simulate(str(config), "--out", str(out), "--resume")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "the study's config changed since its checkpoints were written" in text
    assert "changed: local.lr, rounds" in text
    assert (out / "checkpoints" / "study.json").is_file()  # nothing was overwritten
