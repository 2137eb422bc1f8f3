"""Hospitals' own survival tables: time/event/entry roles, their checks, both training paths."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.schema import SurvivalSpec, TabularSchema, TabularValidationError
from fedcare.data.schema_guide import SCHEMA_GUIDE, SURVIVAL_EXAMPLE
from fedcare.data.site_table import SiteTableSpec, check_site_table, load_site_table
from fedcare.data.survival_table import load_analysis_rows
from fedcare.data.tabular import load_tabular_sites, validate_sites
from tests.data.conftest import write_csv

FEATURES = [
    {"name": "age", "type": "numeric", "min": 0, "max": 120},
    {"name": "smoker", "type": "binary"},
    {"name": "stage", "type": "categorical", "categories": ["I", "II", "III"]},
]
SURVIVAL_SCHEMA = {
    "survival": {"time": "days", "event": "status", "event_values": ["dead"]}
    | {"censored_values": ["alive"]},
    "features": FEATURES,
}


def cohort(seed: int, n: int, events: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "mrn": [f"MRN{seed}{i:04d}" for i in range(n)],  # an identifier, never analysed
            "age": rng.integers(30, 90, n),
            "smoker": rng.choice(["yes", "no"], n),
            "stage": rng.choice(["I", "II", "III"], n),
            "days": rng.integers(0, 2000, n).astype(float),
            "status": rng.choice(["dead", "alive"], n) if events else "alive",
        }
    )


@pytest.fixture
def schema() -> TabularSchema:
    return TabularSchema.parse(SURVIVAL_SCHEMA)


def issues_for(schema: TabularSchema, tmp_path: Path, frame: pd.DataFrame) -> list[str]:
    report = validate_sites(schema, {"north": write_csv(tmp_path, "north", frame)})
    return [str(i) for i in report.issues]


# --- which schemas are allowed ------------------------------------------------------------


def test_a_survival_schema_declares_time_and_event_instead_of_a_target(schema):
    assert schema.target is None and schema.survival is not None
    assert schema.outcome_roles() == {"time": "days", "event": "status"}
    assert schema.survival.event_index == {"alive": 0, "dead": 1}
    assert (schema.num_classes, schema.class_names) == (2, ["censored", "event"])
    with pytest.raises(ConfigError, match=r"declares 'survival'.*not a classification 'target'"):
        _ = schema.label


def test_event_values_default_to_one_and_zero_and_are_compared_as_text():
    spec = SurvivalSpec(time="t", event="e")
    assert spec.event_index == {"0": 0, "1": 1}
    assert SurvivalSpec(time="t", event="e", event_values=[2.0]).event_values == ["2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target": {"column": "y", "positive": [1], "negative": [0]}},
            "exactly one outcome.*both",
        ),
        ({"survival": None}, "exactly one outcome.*neither"),
        ({"survival": {"time": "days", "event": "days"}}, "three different columns"),
        ({"survival": {"time": "age", "event": "status"}}, "time column 'age' is also .* feature"),
        ({"split_column": "days"}, "time column 'days' is also the split_column"),
        (
            {"survival": {"time": "t", "event": "e", "event_values": [1], "censored_values": [1]}},
            r"\['1'\] listed in both",
        ),
        ({"survival": {"time": "t", "event": "e", "event_values": []}}, "'event_values' lists no"),
        (
            {"survival": {"time": "t", "event": "e", "evnt_values": [1]}},
            "did you mean 'event_values'",
        ),
    ],
)
def test_impossible_survival_schemas_are_config_errors(change, message):
    raw = {k: v for k, v in (SURVIVAL_SCHEMA | change).items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        TabularSchema.parse(raw)


def test_a_classification_schema_hashes_as_before_survival_existed():
    schema = TabularSchema.parse(
        {"target": {"column": "y", "positive": [1], "negative": [0]}, "features": FEATURES}
    )
    assert "survival" not in schema.model_dump()  # approvals of existing plans still match


def test_the_guide_documents_every_survival_key_with_a_valid_example():
    example = TabularSchema.parse(yaml.safe_load(SURVIVAL_EXAMPLE))
    assert example.survival is not None and example.survival.event == "died"
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for key in SurvivalSpec.model_fields:
        assert key in SCHEMA_GUIDE, key
        assert f"`survival.{key}`" in readme or f"`{key}`" in readme, key


# --- the checks, each naming site, file, row, CSV line and column -------------------------


def test_a_clean_survival_table_has_no_issue(schema, tmp_path):
    assert issues_for(schema, tmp_path, cohort(0, 40)) == []


def test_negative_missing_and_text_times_are_errors_with_row_and_line(schema, tmp_path):
    frame = cohort(0, 40)
    frame["days"] = frame["days"].astype(object)
    frame.loc[3, "days"] = -4.0
    frame.loc[5, "days"] = np.nan
    frame.loc[8, "days"] = "unknown"
    issues = issues_for(schema, tmp_path, frame)
    assert len(issues) == 3
    where = "site 'north', file '" + str(tmp_path / "north.csv") + "', column 'days'"
    assert all(i.startswith(where) for i in issues)
    assert (
        "1 negative follow-up time(s) (expected numbers >= 0, found e.g. -4.0 in row 4 (line 5))"
        in issues[2]
    )
    assert "1 row(s) have no follow-up time" in issues[0] and "row 6 (line 7)" in issues[0]
    assert "non-numeric follow-up time" in issues[1] and "'unknown' in row 9 (line 10)" in issues[1]


def test_an_undeclared_or_missing_event_value_is_an_error_never_a_silent_censoring(
    schema, tmp_path
):
    frame = cohort(0, 40)
    frame.loc[6, "status"] = "1"
    frame.loc[9, "status"] = np.nan
    missing, undeclared = issues_for(schema, tmp_path, frame)
    assert "column 'status': 1 row(s) have no event indicator" in missing
    assert "row 10 (line 11)" in missing
    assert "event values not among" not in missing
    assert "1 event value(s) not among the declared values" in undeclared
    assert "expected event ['dead'] or censored ['alive']" in undeclared
    assert "'1' in row 7 (line 8)" in undeclared


def test_entry_after_time_is_an_error_naming_both_values(tmp_path):
    raw = SURVIVAL_SCHEMA | {"survival": SURVIVAL_SCHEMA["survival"] | {"entry": "enrolled"}}
    schema = TabularSchema.parse(raw)
    frame = cohort(0, 20).assign(enrolled=0.0)
    frame.loc[2, ["enrolled", "days"]] = [30.0, 10.0]
    (issue,) = issues_for(schema, tmp_path, frame)
    assert "column 'enrolled': 1 row(s) enter after their follow-up time ends" in issue
    assert "(expected enrolled <= days, found enrolled 30.0 > days 10.0 in row 3 (line 4))" in issue


def test_missing_role_columns_are_reported_like_any_declared_column(schema, tmp_path):
    issues = issues_for(schema, tmp_path, cohort(0, 20).rename(columns={"days": "Days"}))
    assert issues == [
        f"site 'north', file '{tmp_path / 'north.csv'}', column 'days': missing column; did you "
        f"mean 'Days'? (expected a column of that name, found columns "
        "['mrn', 'age', 'smoker', 'stage', 'Days', 'status'])"
    ]


def test_a_site_where_every_row_is_censored_is_a_warning_not_an_error(schema, tmp_path):
    report = validate_sites(schema, {"north": write_csv(tmp_path, "north", cohort(0, 20, False))})
    assert report.ok
    (warning,) = report.warnings
    assert warning.site == "north" and warning.column == "status"
    assert "all 20 rows are censored" in warning.problem


# --- the rows reach training (simulated and deployed alike) and analyses ------------------


def test_training_view_carries_time_and_event_and_the_deployed_site_encodes_the_same(
    schema, tmp_path
):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SURVIVAL_SCHEMA))
    files = {
        "a": write_csv(tmp_path, "a", cohort(0, 60)),
        "b": write_csv(tmp_path, "b", cohort(1, 50)),
    }
    simulated = load_tabular_sites(path, files, test_fraction=0.25, seed=3)
    assert simulated.task == "survival" and simulated.class_names == ["censored", "event"]
    spec = SiteTableSpec.from_study({"schema": str(path), "test_fraction": 0.25, "seed": 3})
    for index, (site, file) in enumerate(files.items()):
        deployed = load_site_table(spec, site, file, index)
        expected = simulated.site(site)
        assert expected.time_train is not None and deployed.time_train is not None
        np.testing.assert_array_equal(deployed.x_train, expected.x_train)
        np.testing.assert_array_equal(deployed.time_train, expected.time_train)
        np.testing.assert_array_equal(deployed.y_test, expected.y_test)
        raw = pd.read_csv(file)
        rows = np.sort(np.concatenate([expected.time_train, expected.time_test]))
        np.testing.assert_array_equal(rows, np.sort(raw["days"].to_numpy()))
        assert expected.y_train.sum() + expected.y_test.sum() == (raw["status"] == "dead").sum()


def test_the_deployed_check_warns_of_an_all_censored_site_as_the_simulator_does(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SURVIVAL_SCHEMA))
    spec = SiteTableSpec.from_study({"schema": str(path)})
    file = write_csv(tmp_path, "a", cohort(0, 30, events=False))
    check = check_site_table(spec, "a", file, 0)
    assert check.ok
    assert [w.problem.split(":")[0] for w in check.warnings] == [
        "all 30 rows are censored (no event observed at this site)"
    ]


def test_training_refuses_an_entry_time_it_would_otherwise_ignore(tmp_path):
    raw = SURVIVAL_SCHEMA | {"survival": SURVIVAL_SCHEMA["survival"] | {"entry": "enrolled"}}
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(raw))
    files = {"a": write_csv(tmp_path, "a", cohort(0, 30).assign(enrolled=0.0))}
    with pytest.raises(ConfigError, match=r"survival.entry \('enrolled', left truncation\)"):
        load_tabular_sites(path, files)
    with pytest.raises(ConfigError, match=r"survival\.entry"):
        SiteTableSpec.from_study({"schema": str(path)})


def test_analysis_rows_hold_declared_columns_in_raw_units_without_identifiers(schema, tmp_path):
    frame = cohort(0, 30)
    frame.loc[4, "age"] = np.nan
    frame.loc[7, "stage"] = np.nan
    rows = load_analysis_rows(schema, "north", write_csv(tmp_path, "north", frame))
    assert (rows.site, rows.time, rows.event, rows.entry) == ("north", "days", "status", None)
    assert list(rows.frame.columns) == ["age", "smoker", "stage", "days", "status"]
    np.testing.assert_array_equal(rows.frame["days"], frame["days"])
    np.testing.assert_array_equal(rows.frame["status"], (frame["status"] == "dead").astype(float))
    np.testing.assert_array_equal(rows.frame["smoker"], (frame["smoker"] == "yes").astype(float))
    assert np.isnan(rows.frame.loc[4, "age"]) and rows.frame.loc[5, "age"] == frame.loc[5, "age"]
    assert (
        pd.isna(rows.frame.loc[7, "stage"]) and rows.frame.loc[8, "stage"] == frame.loc[8, "stage"]
    )
    assert rows.warnings == []


def test_analysis_rows_raise_every_error_of_the_file_at_once(schema, tmp_path):
    frame = cohort(0, 30)
    frame.loc[1, "days"] = -1.0
    frame.loc[2, "status"] = "lost"
    with pytest.raises(TabularValidationError, match=r"2 data problem\(s\)") as caught:
        load_analysis_rows(schema, "north", write_csv(tmp_path, "north", frame))
    assert {i.column for i in caught.value.report.errors} == {"days", "status"}
    with pytest.raises(DataValidationError, match=r"site 'north'.*file not found"):
        load_analysis_rows(schema, "north", tmp_path / "absent.csv")
