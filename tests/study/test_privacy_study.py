from fedcare.report.html import write_report
from fedcare.study.config import StudyConfig
from fedcare.study.runner import StudyRunner


def test_a_privacy_utility_study_reports_epsilon_and_plots_accuracy_against_it(tmp_path):
    config = StudyConfig.model_validate(
        {
            "name": "privacy",
            "dataset": {"name": "synthetic", "params": {"num_sites": 4, "samples_per_site": 40}},
            "model": {"name": "logistic"},
            "rounds": 3,
            "baselines": [],
            "explain": False,
            "strategies": [
                {"name": "fedavg", "params": {"weighting": "uniform"}},
                {
                    "name": "fedavg",
                    "label": "secagg",
                    "params": {"secure": {"kind": "secure_aggregation", "value_range": 2.0}},
                },
            ],
            "epsilon_sweep": {
                "strategy": {"name": "fedavg", "label": "dp", "params": {"dp": {"clip_norm": 0.5}}},
                "epsilons": [1.0, 8.0],
            },
        }
    )
    metrics = StudyRunner(config, tmp_path).run().metrics
    by_label = {s["label"]: s for s in metrics["strategies"]}
    assert set(by_label) == {"fedavg", "secagg", "dp ε=1", "dp ε=8"}
    assert by_label["dp ε=1"]["privacy"]["epsilon"]["mean"] <= 1.0
    assert by_label["dp ε=8"]["privacy"]["epsilon"]["mean"] <= 8.0
    assert "privacy" not in by_label["secagg"]  # hiding updates spends no epsilon
    html = write_report(tmp_path).read_text()
    assert "<h2>Privacy</h2>" in html
    assert 'alt="Mean site accuracy against epsilon' in html  # the privacy-utility plot
    assert "SecAgg" in html and "central DP ε=1" in html
