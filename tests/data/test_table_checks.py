"""Every data problem names the site, the file and the column, and all come back together."""

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import DataValidationError
from fedcare.data.schema import TabularSchema, TabularValidationError
from fedcare.data.tabular import load_tabular_sites, validate_sites
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


def drop_age(f: pd.DataFrame) -> None:
    del f["age"]


def text_in_age(f: pd.DataFrame) -> None:
    f["age"] = f["age"].astype(object)
    f.loc[4, "age"] = "sixty"


def no_smoker_values(f: pd.DataFrame) -> None:
    f["smoker"] = np.nan


def age_out_of_range(f: pd.DataFrame) -> None:
    f.loc[[0, 7], "age"] = 430


def undeclared_label(f: pd.DataFrame) -> None:
    f.loc[6, "outcome"] = "maybe"


def unknown_ward(f: pd.DataFrame) -> None:
    f.loc[3, "ward"] = "burns"


def not_binary(f: pd.DataFrame) -> None:
    f.loc[2, "smoker"] = "sometimes"


def missing_label(f: pd.DataFrame) -> None:
    f.loc[5, "outcome"] = np.nan


CASES: list[tuple[Callable[[pd.DataFrame], None], str, list[str]]] = [
    (drop_age, "age", ["missing column"]),
    (text_in_age, "age", ["non-numeric", "'sixty' in row 5 (line 6)"]),
    (no_smoker_values, "smoker", ["entirely missing"]),
    (age_out_of_range, "age", ["2 value(s) out of the declared range", "430"]),
    (undeclared_label, "outcome", ["not among the declared values", "'maybe' in row 7 (line 8)"]),
    (unknown_ward, "ward", ["not in the declared list", "burns"]),
    (not_binary, "smoker", ["not binary", "'sometimes'"]),
    (missing_label, "outcome", ["have no label", "row 6"]),
]


@pytest.mark.parametrize(("damage", "column", "words"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_problem_names_site_file_and_column(tmp_path, schema, damage, column, words):
    bad = site_frame(1, 40)
    damage(bad)
    files = {
        "good": write_csv(tmp_path, "good", site_frame(0, 40)),
        "st-marys": write_csv(tmp_path, "st-marys", bad),
    }
    (issue,) = validate_sites(schema, files).errors
    text = str(issue)
    assert "site 'st-marys'" in text and "st-marys.csv" in text and f"column '{column}'" in text
    for word in words:
        assert word in text


def test_missing_and_unreadable_files_name_site_and_file(tmp_path, schema):
    corrupt = tmp_path / "b.parquet"
    corrupt.write_bytes(b"not parquet at all")
    excel = tmp_path / "c.xlsx"
    excel.write_text("?")
    report = validate_sites(schema, {"a": tmp_path / "none.csv", "b": corrupt, "c": excel})
    messages = sorted(str(i) for i in report.errors)
    assert (
        "site 'a'" in messages[0] and "none.csv" in messages[0] and "file not found" in messages[0]
    )
    assert "site 'b'" in messages[1] and "b.parquet" in messages[1] and "cannot read" in messages[1]
    assert "site 'c'" in messages[2] and "unsupported file type" in messages[2]


def test_all_problems_of_all_sites_are_raised_in_one_error(tmp_path, schema):
    frames = {"a": site_frame(0, 30), "b": site_frame(1, 30), "c": site_frame(2, 30)}
    no_smoker_values(frames["a"])
    age_out_of_range(frames["b"])
    undeclared_label(frames["c"])
    text_in_age(frames["c"])
    files = {site: write_csv(tmp_path, site, f) for site, f in frames.items()}
    with pytest.raises(DataValidationError, match="4 data problem") as caught:
        load_tabular_sites(schema, files)
    assert isinstance(caught.value, TabularValidationError)
    assert {i.site for i in caught.value.report.errors} == {"a", "b", "c"}


def test_category_at_one_site_only_is_a_warning_or_an_error_when_strict(tmp_path, schema):
    files = {
        "a": write_csv(tmp_path, "a", site_frame(0, 40, ("icu",))),
        "b": write_csv(tmp_path, "b", site_frame(1, 40, ("icu", "onco"))),
    }
    report = validate_sites(schema, files)
    assert report.ok
    (warning,) = report.warnings
    assert all(s in str(warning) for s in ("site 'b'", "b.csv", "column 'ward'", "'onco'"))
    strict = validate_sites(schema, files, strict=True)
    assert not strict.ok and "onco" in str(strict.errors[0])
    with pytest.raises(DataValidationError, match="site only"):
        load_tabular_sites(schema, files, strict=True)


def test_an_optional_column_may_be_absent(tmp_path, schema):
    frame = site_frame(0, 40).drop(columns="bmi")
    files = {"a": write_csv(tmp_path, "a", frame), "b": write_csv(tmp_path, "b", site_frame(1, 40))}
    assert validate_sites(schema, files).ok
    ds = load_tabular_sites(schema, files)
    bmi = ds.feature_names.index("bmi")
    assert np.all(ds.site("a").x_train[:, bmi] == 0)  # imputed with the global mean


BINARY_01 = SCHEMA_DICT | {"target": {"column": "outcome", "positive": [1], "negative": [0]}}


def test_label_values_outside_the_declared_classes_are_errors_not_negatives(tmp_path):
    # The user's file: outcome 0/1, but two rows say 2 and yes. Before, both trained as 0.
    frame = site_frame(0, 40)
    frame["outcome"] = (frame["outcome"] == "yes").astype(int).astype(object)
    frame.loc[3, "outcome"] = 2
    frame.loc[9, "outcome"] = "yes"
    files = {"north": write_csv(tmp_path, "north", frame)}
    schema = TabularSchema.parse(BINARY_01)
    (issue,) = validate_sites(schema, files).errors
    assert str(issue) == (
        f"site 'north', file '{files['north']}', column 'outcome': 2 label(s) not among the "
        "declared values (expected positive ['1'] or negative ['0'], found ['2', 'yes'], "
        "first '2' in row 4 (line 5))"
    )
    with pytest.raises(DataValidationError, match="not among the declared values"):
        load_tabular_sites(schema, files)


def test_a_site_whose_rows_are_all_one_class_is_a_warning_that_says_what_follows(tmp_path):
    one_class = site_frame(1, 40)
    one_class["outcome"] = "no"
    files = {
        "a": write_csv(tmp_path, "a", site_frame(0, 40)),
        "b": write_csv(tmp_path, "b", one_class),
    }
    schema = TabularSchema.parse(SCHEMA_DICT)
    assert validate_sites(schema, files).ok
    ds = load_tabular_sites(schema, files)
    assert set(ds.site("b").y_train) == {0}
    (warning,) = ds.extra["warnings"]
    assert warning.startswith("site 'b': all 28 training rows are one class ('negative')")
    assert "local-only baseline learns to predict that class" in warning
    assert "AUC is undefined" in warning
