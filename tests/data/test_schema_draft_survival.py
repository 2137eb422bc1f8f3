"""Drafting a survival schema from one hospital's file: roles as given, event values guessed."""

import pandas as pd
import pytest
import yaml

from fedcare.core.errors import ConfigError
from fedcare.data.schema import TabularSchema
from fedcare.data.schema_draft import SurvivalRoles, draft_schema
from fedcare.data.tabular import validate_sites

EXPORT = pd.DataFrame(
    {
        "age": [61, 70, 55, 48, 66, 72],
        "stage": ["II", "I", "III", "I", "II", "III"],
        "months": [4.0, 30.5, 12.0, 7.5, 22.0, 3.0],
        "vital": ["deceased", "alive", "alive", "deceased", "alive", "alive"],
        "enrolled": [0.0, 1.0, 0.0, 2.0, 0.0, 0.5],
    }
)


def test_the_draft_declares_the_roles_leaves_them_out_of_the_features_and_validates(tmp_path):
    roles = SurvivalRoles(time="months", event="vital", entry="enrolled")
    text = draft_schema(EXPORT, "north.csv", survival=roles)
    assert "CHECK: the value meaning the event happened" in text
    schema = TabularSchema.parse(yaml.safe_load(text))
    assert schema.target is None and schema.survival is not None
    assert schema.outcome_roles() == {"time": "months", "event": "vital", "entry": "enrolled"}
    assert set(schema.survival.event_values + schema.survival.censored_values) == {
        "alive",
        "deceased",
    }
    assert [f.name for f in schema.features] == ["age", "stage"]
    path = tmp_path / "north.csv"
    EXPORT.to_csv(path, index=False)
    assert validate_sites(schema, {"north": path}).ok


def test_a_truthy_event_value_is_guessed_as_the_event():
    frame = EXPORT.assign(vital=["yes", "no", "no", "yes", "no", "no"])
    text = draft_schema(frame, "f.csv", survival=SurvivalRoles("months", "vital"))
    survival = yaml.safe_load(text)["survival"]
    assert (survival["event_values"], survival["censored_values"]) == (["yes"], ["no"])


@pytest.mark.parametrize(
    ("roles", "target", "message"),
    [
        (SurvivalRoles("month", "vital"), None, "--time 'month' is not a column.*'months'"),
        (SurvivalRoles("months", "months"), None, "name the same column"),
        (SurvivalRoles("months", "stage"), None, "'stage' has 3 distinct values"),
        (SurvivalRoles("months", "vital"), "vital", "either --target .* not both"),
    ],
)
def test_impossible_roles_are_refused_by_name(roles, target, message):
    with pytest.raises(ConfigError, match=message):
        draft_schema(EXPORT, "f.csv", target, roles)
