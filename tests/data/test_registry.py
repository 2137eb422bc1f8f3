import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.registry import dataset_names, describe_dataset, load_dataset


def test_shipped_datasets_are_listed_and_described():
    assert {"heart-disease", "breastmnist", "retinamnist", "synthetic", "tabular"} <= set(
        dataset_names()
    )
    info = describe_dataset("heart-disease")
    assert [s["train"] for s in info["sites"]] == [199, 172, 30, 85]
    assert info["license"] == "CC BY 4.0"


def test_misspelled_dataset_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'heart-disease'"):
        load_dataset("heart-diseases")
