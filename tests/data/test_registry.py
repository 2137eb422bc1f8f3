"""Datasets by name, as a study config or `fedcare datasets` names them."""

import pytest
import yaml

from fedcare.core.errors import ConfigError
from fedcare.data.registry import dataset_names, describe_dataset, load_dataset
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


def test_every_dataset_is_listed():
    assert dataset_names() == [
        "breastmnist",
        "heart-disease",
        "retinamnist",
        "synthetic",
        "tabular",
        "tcga-brca",
    ]


def test_heart_description_has_sites_rows_balance_and_attribution():
    info = describe_dataset("heart-disease")
    assert [s["name"] for s in info["sites"]] == ["cleveland", "hungarian", "switzerland", "va"]
    assert [(s["train"], s["test"]) for s in info["sites"]] == [
        (199, 104),
        (172, 89),
        (30, 16),
        (85, 45),
    ]
    cleveland = info["sites"][0]
    assert sum(cleveland["label_counts_train"]) == 199
    assert sum(cleveland["label_share_train"]) == pytest.approx(1.0, abs=1e-3)
    assert info["num_features"] == 13 and info["classes"] == ["no disease", "disease"]
    assert info["license"] == "CC BY 4.0" and "Detrano" in info["source"]


def test_tcga_brca_description_has_regions_events_and_follow_up():
    info = describe_dataset("tcga-brca")
    assert info["task"] == "survival" and info["num_features"] == 39
    northeast = info["sites"][0]
    assert (northeast["name"], northeast["train"], northeast["test"]) == ("northeast", 248, 63)
    assert sum(s["events_train"] + s["events_test"] for s in info["sites"]) == 151
    assert northeast["event_share_train"] == pytest.approx(
        northeast["events_train"] / 248, abs=1e-3
    )
    assert northeast["median_time_train"] > 0
    assert "TCGA Research Network" in info["source"]


def test_parameters_reach_the_loader():
    ds = load_dataset("retinamnist", num_sites=3, partition="dirichlet", alpha=1.0, seed=1)
    assert len(ds.sites) == 3 and ds.num_classes == 5
    assert len(load_dataset("synthetic", num_sites=4, samples_per_site=10).sites) == 4


def test_tabular_needs_schema_and_files(tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA_DICT))
    files = {"a": write_csv(tmp_path, "a", site_frame(0, 40))}
    assert load_dataset("tabular", schema=schema, files=files).site_names == ["a"]
    with pytest.raises(ConfigError, match=r"dataset 'tabular'.*missing a required argument"):
        load_dataset("tabular")


def test_misspelled_dataset_gets_a_suggestion_and_the_list():
    with pytest.raises(
        ConfigError, match=r"did you mean 'heart-disease'.*Known datasets: breastmnist"
    ):
        load_dataset("heart-diseases")


def test_unknown_parameter_is_a_config_error_naming_what_is_accepted():
    with pytest.raises(ConfigError, match=r"dataset 'breastmnist'.*num_site.*accepts.*num_sites"):
        load_dataset("breastmnist", num_site=3)
