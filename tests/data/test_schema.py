"""The declared schema: strict keys, helpful messages, loadable from YAML."""

from pathlib import Path

import pytest
import yaml

from fedcare.core.errors import ConfigError
from fedcare.data.schema import FeatureSpec, TabularSchema, TargetSpec
from fedcare.data.schema_guide import SCHEMA_EXAMPLE, SCHEMA_GUIDE
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
                "target": {"column": "y", "positive": [1], "negative": [0]},
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
        "target": {"column": "y", "positive": [1], "negative": [0]},
        "features": [{"name": "a", "type": "numeric"}],
    }
    with pytest.raises(ConfigError, match=message):
        TabularSchema.parse(raw | change)


def test_missing_schema_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="schema file not found"):
        TabularSchema.load(tmp_path / "nope.yaml")


FEATURES = [{"name": "age", "type": "numeric"}]


def test_a_binary_target_with_only_positive_is_refused_with_what_to_add():
    with pytest.raises(ConfigError) as caught:
        TabularSchema.parse(
            {"target": {"column": "outcome", "positive": [1]}, "features": FEATURES}
        )
    assert "binary target declares both classes: positive is ['1']" in str(caught.value)
    assert "add 'negative: [...]' listing the value(s) of 'outcome' that mean negative" in str(
        caught.value
    )


def test_binary_classes_map_each_declared_value_and_may_not_overlap():
    target = {"column": "y", "positive": ["yes", "y"], "negative": "no"}
    schema = TabularSchema.parse({"target": target, "features": FEATURES})
    assert schema.target.class_index == {"no": 0, "yes": 1, "y": 1}
    with pytest.raises(ConfigError, match=r"\['1'\] listed as both positive and negative"):
        TabularSchema.parse(
            {"target": {"column": "y", "positive": [1], "negative": [0, 1]}, "features": FEATURES}
        )


def test_an_unquoted_yaml_yes_is_refused_since_the_file_spelling_is_lost():
    raw = yaml.safe_load("target: {column: smoker, positive: [yes], negative: [no]}")
    with pytest.raises(ConfigError, match=r"'target.positive': YAML reads an unquoted yes"):
        TabularSchema.parse(raw | {"features": FEATURES})


@pytest.mark.parametrize(
    ("raw", "expected", "never"),
    [
        (
            {"target": "outcome", "features": FEATURES},
            "'target': expected a mapping with the keys column, positive, negative, classes, "
            "found str",
            "TargetSpec",
        ),
        (
            {"target": {"name": "y", "positive": [1], "negative": [0]}, "features": FEATURES},
            "unknown key 'target.name' (allowed here: column, positive, negative, classes)",
            "did you mean 'name'",
        ),
        (
            {"target": {"column": "y", "classes": [0, 1]}, "features": [{"name": "a", "typ": 1}]},
            "unknown key 'features.0.typ'; did you mean 'type'?",
            "FeatureSpec",
        ),
        (
            {
                "target": {"column": "y", "classes": [0, 1]},
                "features": [{"name": "a", "type": "x"}],
            },
            "'features.0.type': expected 'numeric', 'categorical' or 'binary', found 'x'",
            "Input should",
        ),
        ([1, 2], "expected a mapping with the keys target, features,", "TabularSchema"),
    ],
)
def test_schema_errors_use_the_schema_words_not_internal_class_names(raw, expected, never):
    with pytest.raises(ConfigError) as caught:
        TabularSchema.parse(raw)
    assert expected in str(caught.value)
    assert never not in str(caught.value)


def test_an_empty_schema_file_says_what_it_needs(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the schema is empty; it needs 'target' and 'features'"):
        TabularSchema.load(path)


def test_the_documented_example_is_valid_and_every_key_is_explained():
    schema = TabularSchema.parse(yaml.safe_load(SCHEMA_EXAMPLE))
    assert schema.target.class_index == {"0": 0, "1": 1}
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert SCHEMA_EXAMPLE in readme  # README and `datasets describe tabular` show one example
    for model in (TabularSchema, TargetSpec, FeatureSpec):
        for key in model.model_fields:
            assert key in SCHEMA_GUIDE, key
            assert f"`{key}" in readme or f"`target.{key}`" in readme, key
