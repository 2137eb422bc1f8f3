import pytest

from fedcare.study.config import StudyConfig
from fedcare.study.runner import StudyRunner


def test_a_study_reports_each_sites_shapley_and_leave_one_out(tmp_path):
    config = StudyConfig.model_validate(
        {
            "name": "contrib",
            "dataset": {"name": "synthetic", "params": {"num_sites": 3, "samples_per_site": 60}},
            "model": {"name": "logistic"},
            "rounds": 3,
            "baselines": [],
            "strategies": [{"name": "fedavg"}],
            "explain": False,
            "contributions": {"strategy": "fedavg", "permutations": 6, "seed": 1},
        }
    )
    block = StudyRunner(config, tmp_path).run().metrics["contributions"]
    sites = block["sites"]
    assert len(sites) == 3
    exact = [v["shapley_exact"] for v in sites.values()]
    # Efficiency: Shapley values share out exactly what the full federation gained.
    assert sum(exact) == pytest.approx(block["all_sites_utility"] - block["empty_utility"])
    assert block["coalitions_evaluated"] == 2**3
    assert all("shapley_monte_carlo" in v and "leave_one_out" in v for v in sites.values())
