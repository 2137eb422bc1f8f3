"""A survival study on the shipped TCGA-BRCA regions: trained with the Cox loss, reported
by C-index (each region's, and their mean, FLamby's metric)."""

import json

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.study.config import parse_config
from fedcare.study.runner import StudyRunner, best_federated

REGIONS = ("northeast", "south", "west", "midwest", "europe", "canada")


def survival_config(**changes: object):
    raw = {
        "name": "tcga-cox",
        "dataset": {"name": "tcga-brca", "params": {"normalisation": "site"}},
        "model": {"name": "logistic"},
        "seeds": [0],
        "rounds": 2,
        "local": {"lr": 0.1, "steps": 5, "batch_size": 16},
        "baselines": ["local", "majority"],
        "strategies": [{"name": "fedadam", "params": {"server_lr": 0.05}}, {"name": "ditto"}],
    }
    raw.update(changes)
    return parse_config(raw)


def test_a_survival_study_reports_c_index_per_region_and_flamby_mean(tmp_path) -> None:
    outcome = StudyRunner(survival_config(), tmp_path).run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["study"]["task"] == "survival"
    by_name = {s["name"]: s for s in metrics["strategies"]}
    fedadam = by_name["fedadam"]
    assert set(fedadam["per_site"]["europe"]) == {"c_index", "loss"}
    per_region = [fedadam["per_site"][r]["c_index"]["mean"] for r in REGIONS]
    assert fedadam["overall"]["mean_site_c_index"]["mean"] == pytest.approx(np.mean(per_region))
    assert fedadam["overall"]["worst_site_c_index"]["mean"] == pytest.approx(min(per_region))
    assert fedadam["curves"]["round"] == [1, 2]
    # One risk for every patient orders no pair: the floor every model is read against.
    assert by_name["majority"]["overall"]["mean_site_c_index"]["mean"] == 0.5
    # Ditto's personal models are compared with the global one by C-index.
    assert set(by_name["ditto"]["personalisation"]["west"]) >= {"personal", "global", "local"}
    assert best_federated(outcome.metrics)[0] in {"fedadam", "ditto"}
    report = (tmp_path / "report.html").read_text()
    assert "Harrell&#x27;s C-index" in report or "Harrell's C-index" in report
    assert "FLamby" in report
    assert "europe,c_index" in (tmp_path / "metrics.csv").read_text()


def test_sample_level_dp_sgd_is_refused_for_a_survival_study(tmp_path) -> None:
    config = survival_config(
        baselines=[],
        strategies=[{"name": "fedavg", "params": {"sample_dp": {"noise_multiplier": 1.0}}}],
    )
    with pytest.raises(ConfigError, match="cannot train a survival"):
        StudyRunner(config, tmp_path).run()


def test_asking_for_permutation_importance_on_survival_data_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="explain: permutation importance"):
        StudyRunner(survival_config(explain=True), tmp_path)


def test_hospitals_own_survival_tables_train_a_risk_score_by_their_schema(tmp_path) -> None:
    """Three hospitals' CSV files whose hazard rises with age: the federated linear risk
    score learns to rank older patients as riskier."""
    rng = np.random.default_rng(0)
    files = {}
    for site in ("north", "south", "east"):
        age = rng.normal(60, 10, 150)
        event_time = rng.exponential(365 / np.exp(0.08 * (age - 60)))
        censor_time = rng.exponential(500, 150)
        frame = pd.DataFrame(
            {
                "age": age.round(1),
                "time": np.minimum(event_time, censor_time).round(1),
                "death": (event_time < censor_time).astype(int),
            }
        )
        frame.to_csv(tmp_path / f"{site}.csv", index=False)
        files[site] = str(tmp_path / f"{site}.csv")
    schema = tmp_path / "schema.yaml"
    schema.write_text(
        "survival: {time: time, event: death}\n"
        "features: [{name: age, type: numeric}]\n"
        "test_fraction: 0.3\n"
    )
    config = survival_config(
        dataset={"name": "tabular", "params": {"schema": str(schema), "files": files}},
        model={"name": "fedcare.models.cox:LinearRisk"},
        rounds=5,
        baselines=[],
        strategies=[{"name": "fedavg"}],
    )
    outcome = StudyRunner(config, tmp_path / "study").run()
    fedavg = outcome.metrics["strategies"][0]
    assert outcome.metrics["study"]["task"] == "survival"
    assert fedavg["overall"]["mean_site_c_index"]["mean"] > 0.65
