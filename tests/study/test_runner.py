import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.site_table import SiteTableSpec, load_site_table
from fedcare.study.config import parse_config
from fedcare.study.presets import heart_demo_config
from fedcare.study.runner import StudyRunner, best_federated
from tests.conftest import make_sites
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


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


def own_tables_study(tmp_path, seeds, **params):
    """A study on two hospitals' own CSV files (the YAML a user would write)."""
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA_DICT))
    files = {s: str(write_csv(tmp_path, s, site_frame(i, 90))) for i, s in enumerate("ab")}
    dataset = {"name": "tabular", "params": {"schema": str(schema), "files": files, **params}}
    return parse_config(
        {
            "name": "own-tables",
            "dataset": dataset,
            "model": {"name": "logistic"},
            "seeds": seeds,
            "rounds": 1,
            "baselines": ["majority"],
            "strategies": [{"name": "fedavg"}],
            "explain": False,
        }
    )


def test_each_seed_splits_a_hospitals_table_its_own_way_and_the_results_say_which(tmp_path):
    config = own_tables_study(tmp_path, [0, 1])
    runner = StudyRunner(config, tmp_path / "study")
    zero, one = runner.data_for(0)[0], runner.data_for(1)[0]
    assert not np.array_equal(zero.site("a").x_test, one.site("a").x_test)
    assert runner.data_for(1)[0] is one  # loaded once per split seed

    metrics = runner.run().metrics

    assert metrics["study"]["split"] == {
        "source": "run seed",
        "pinned": False,
        "runs": [{"seed": 0, "split_seed": 0}, {"seed": 1, "split_seed": 1}],
    }
    html = (tmp_path / "study" / "report.html").read_text()
    assert "Train/test split" in html and "each run seed&#x27;s own (split seeds 0, 1)" in html


def test_a_pinned_split_seed_gives_every_seed_the_same_split(tmp_path):
    config = own_tables_study(tmp_path, [0, 1], seed=7)
    runner = StudyRunner(config, tmp_path / "study")
    assert runner.data_for(0)[0] is runner.data_for(1)[0]

    metrics = runner.run().metrics

    assert metrics["study"]["split"]["source"] == "dataset.params.seed"
    assert metrics["study"]["split"]["pinned"] is True
    assert [r["split_seed"] for r in metrics["study"]["split"]["runs"]] == [7, 7]
    html = (tmp_path / "study" / "report.html").read_text()
    assert "pinned by dataset.params.seed = 7 (same for every seed)" in html


def test_the_simulators_default_encoding_is_the_deployed_sites(tmp_path):
    config = own_tables_study(tmp_path, [3])
    simulated = StudyRunner(config, tmp_path / "study").data_for(3)[0]
    params = config.dataset.params
    spec = SiteTableSpec.from_study(params, run_seed=3)  # the plan of the run with seed 3
    for index, (site, path) in enumerate(params["files"].items()):
        deployed = load_site_table(spec, site, path, index)
        np.testing.assert_array_equal(deployed.x_train, simulated.site(site).x_train)
        np.testing.assert_array_equal(deployed.x_test, simulated.site(site).x_test)
        np.testing.assert_array_equal(deployed.y_train, simulated.site(site).y_train)


def test_a_dataset_whose_split_the_run_seed_does_not_change_records_no_split(tmp_path):
    config = parse_config({"name": "toy", "seeds": [0, 1], "rounds": 1, "baselines": ["local"]})
    metrics = StudyRunner(config, tmp_path, dataset=make_sites([20, 20])).run().metrics
    assert "split" not in metrics["study"]
