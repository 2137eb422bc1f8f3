"""A study YAML with sample-level DP-SGD, end to end: metrics.json and the report."""

import json

import pytest

from fedcare.report.html import write_report
from fedcare.study.config import load_config
from fedcare.study.runner import StudyRunner

STUDY = """
name: dp-sgd
dataset: {name: synthetic, params: {num_sites: 3, samples_per_site: 40}}
model: {name: logistic}
seeds: [0, 1]
rounds: 3
local: {optimizer: sgd, lr: 0.2, epochs: 1, batch_size: 10}
baselines: []
explain: false
strategies:
  - name: fedavg
    label: dp-sgd
    params:
      sample_dp: {epsilon: 2.0, delta: 1.0e-5, clip_norm: 1.0}
  - name: fedavg
    label: both
    params:
      dp: {epsilon: 5.0, clip_norm: 0.5}
      sample_dp: {noise_multiplier: 1.5, clip_norm: 1.0}
"""


def test_a_study_with_sample_dp_reports_each_sites_epsilon(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    out = tmp_path / "out"
    StudyRunner(load_config(path), out).run()
    metrics = json.loads((out / "metrics.json").read_text())
    by_label = {s["label"]: s for s in metrics["strategies"]}
    sites = [s["name"] for s in metrics["sites"]]

    block = by_label["dp-sgd"]["sample_privacy"]
    assert set(block["epsilon"]) == set(sites)
    for site in sites:  # calibrated per site to the target, on its private side
        assert 2.0 - 0.01 <= block["epsilon"][site]["mean"] <= 2.0
        curve = block["epsilon_per_round"][site]
        assert len(curve) == 3 and curve == sorted(curve)
    assert block["worst_site"] in sites
    assert block["delta"] == 1e-5 and block["target_epsilon"] == 2.0
    assert "privacy" not in by_label["dp-sgd"]  # no client-level DP asked for

    both = by_label["both"]
    assert both["privacy"]["epsilon"]["mean"] <= 5.0  # client level, as before
    assert both["sample_privacy"]["noise_multiplier"] == dict.fromkeys(sites, 1.5)
    worst = both["sample_privacy"]["worst_site"]
    assert both["sample_privacy"]["worst_epsilon"]["mean"] == pytest.approx(
        max(both["sample_privacy"]["epsilon"][s]["mean"] for s in sites)
    )

    html = write_report(out).read_text()
    assert "<h3>Sample-level DP-SGD</h3>" in html
    for site in sites:
        assert f"<td>{site}" in html
    assert f"<td>{worst} <span class='kind'>worst</span></td>" in html
