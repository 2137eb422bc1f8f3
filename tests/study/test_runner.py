import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.study.config import parse_config
from fedcare.study.presets import heart_demo_config
from fedcare.study.runner import StudyRunner, best_federated
from tests.conftest import make_sites


def test_study_writes_metrics_report_and_models(tmp_path):
    config = parse_config(
        {
            "name": "toy",
            "seeds": [0, 1],
            "rounds": 3,
            "local": {"lr": 0.1, "batch_size": 8},
            "strategies": [{"name": "fedavg"}, {"name": "fedadam", "params": {"server_lr": 0.05}}],
        }
    )
    dataset = make_sites([40, 25, 30])
    outcome = StudyRunner(config, tmp_path, dataset=dataset).run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [s["name"] for s in metrics["strategies"]] == [
        "local",
        "pooled",
        "majority",
        "fedavg",
        "fedadam",
    ]
    fedavg = metrics["strategies"][3]
    assert len(fedavg["per_site"]["site0"]["accuracy"]["values"]) == 2
    assert fedavg["curves"]["round"] == [1, 2, 3]
    assert fedavg["communication"]["upload_bytes"] > 0
    # Mean of sites = mean over the per-site values, seed by seed.
    per_seed = np.mean(
        [
            [fedavg["per_site"][s]["accuracy"]["values"][i] for s in ("site0", "site1", "site2")]
            for i in range(2)
        ],
        axis=1,
    )
    assert fedavg["overall"]["mean_site_accuracy"]["mean"] == np.mean(per_seed)
    for name in ("report.html", "metrics.csv", "config.yaml"):
        assert (tmp_path / name).is_file()
    local_model = load_file(str(tmp_path / "models" / "local-seed0.safetensors"))
    assert {"site0/linear.weight", "site2/linear.bias"} <= set(local_model)
    assert best_federated(outcome.metrics)[0] in {"fedavg", "fedadam"}


def _labelled_site(name: str, train: list[int], test: list[int]) -> SiteData:
    def x(n: int) -> np.ndarray:
        return np.zeros((n, 2), dtype=np.float32)

    return SiteData(name, x(len(train)), np.array(train), x(len(test)), np.array(test))


def test_majority_baseline_predicts_each_sites_own_training_majority(tmp_path):
    # north mostly saw class 0, south mostly class 1: each predicts its own majority.
    dataset = FederatedDataset(
        name="two-clinics",
        sites=[
            _labelled_site("north", [0, 0, 1], [0, 1, 1, 1]),
            _labelled_site("south", [1, 1, 1, 0], [1, 0]),
        ],
        task="binary",
        num_classes=2,
        input_shape=(2,),
        class_names=["healthy", "sick"],
    )
    config = parse_config({"name": "floor", "seeds": [0, 1], "baselines": ["majority"]})

    metrics = StudyRunner(config, tmp_path, dataset=dataset).run().metrics

    (entry,) = metrics["strategies"]
    assert (entry["name"], entry["kind"], entry["label"]) == (
        "majority",
        "majority",
        "Majority class",
    )
    assert entry["predicts"] == {"north": "healthy", "south": "sick"}
    assert entry["per_site"]["north"]["accuracy"]["values"] == [0.25, 0.25]
    assert entry["per_site"]["south"]["accuracy"]["mean"] == 0.5
    assert entry["per_site"]["north"]["auc"]["mean"] == 0.5  # constant scores rank nothing
    # Loss of the add-one smoothed training prior: north's P(class 0) = 3/5.
    prior_north = np.array([3 / 5, 2 / 5])
    expected_loss = -np.log(prior_north[[0, 1, 1, 1]]).mean()
    assert entry["per_site"]["north"]["loss"]["mean"] == pytest.approx(expected_loss)
    assert entry["curves"] == {"round": []}
    assert "privacy" not in entry  # no rounds, no privacy spent
    assert not (tmp_path / "models" / "majority-seed0.safetensors").exists()  # no model
    assert "Majority class" in (tmp_path / "report.html").read_text()


def test_baselines_default_to_local_pooled_and_majority_and_the_demo_has_all_three():
    assert parse_config({}).baselines == ["local", "pooled", "majority"]
    assert heart_demo_config().baselines == ["local", "pooled", "majority"]


def test_an_unknown_baseline_is_refused_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match="'local', 'pooled' or 'majority'"):
        parse_config({"baselines": ["majorty"]})
