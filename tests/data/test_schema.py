"""The declared schema: strict keys, helpful messages, loadable from YAML."""

import pytest
import yaml

from fedcare.core.errors import ConfigError
from fedcare.data.schema import TabularSchema
from tests.data.conftest import SCHEMA_DICT


def test_schema_loads_from_yaml(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SCHEMA_DICT))
    schema = TabularSchema.load(path)
    assert schema.target.column == "outcome"
    assert [f.name for f in schema.features] == ["age", "smoker", "ward", "bmi"]
    assert schema.features[3].required is False


def test_numeric_categories_from_yaml_are_compared_as_text():
    schema = TabularSchema.parse(
        {
            "target": {"column": "y", "classes": [0, 1, 2]},
            "features": [{"name": "cp", "type": "categorical", "categories": [1, 2.0, "3"]}],
        }
    )
    assert schema.features[0].categories == ["1", "2", "3"]
    assert schema.target.num_classes == 3


def test_missing_target_kind_names_the_field():
    with pytest.raises(ConfigError, match="positive"):
        TabularSchema.parse(
            {"target": {"column": "y"}, "features": [{"name": "a", "type": "numeric"}]}
        )


def test_misspelled_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'features.0.maxx'; did you mean 'max'"):
        TabularSchema.parse(
            {
                "target": {"column": "y", "positive": [1]},
                "features": [{"name": "a", "type": "numeric", "maxx": 2}],
            }
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split_column": "set", "test_fraction": 0.2}, "either 'split_column' or 'test_fraction'"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"features": [{"name": "a", "type": "binary", "min": 0}]}, "min/max only apply"),
        ({"features": [{"name": "a", "type": "numeric"}] * 2}, "declared twice"),
    ],
)
def test_inconsistent_schemas_are_config_errors(change, message):
    raw = {
        "target": {"column": "y", "positive": [1]},
        "features": [{"name": "a", "type": "numeric"}],
    }
    with pytest.raises(ConfigError, match=message):
        TabularSchema.parse(raw | change)


def test_missing_schema_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="schema file not found"):
        TabularSchema.load(tmp_path / "nope.yaml")
