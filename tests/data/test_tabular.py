"""A hospital's own tables: validation names site, file and column; harmonisation never pools."""

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import DataValidationError
from fedcare.data.harmonise import combine, encode, site_aggregates
from fedcare.data.schema import TabularSchema
from fedcare.data.tabular import load_tabular_sites, validate_sites

SCHEMA = TabularSchema.parse(
    {
        "target": {"column": "outcome", "positive": ["yes"]},
        "features": [
            {"name": "age", "type": "numeric", "min": 0, "max": 120},
            {"name": "smoker", "type": "binary"},
            {"name": "ward", "type": "categorical"},
        ],
    }
)


def site_frame(rng: np.random.Generator, n: int, wards: list[str]) -> pd.DataFrame:
    age = rng.integers(20, 90, n)
    return pd.DataFrame(
        {
            "age": age,
            "smoker": rng.choice(["yes", "no"], n),
            "ward": rng.choice(wards, n),
            "outcome": np.where(age + rng.normal(0, 10, n) > 55, "yes", "no"),
        }
    )


@pytest.fixture
def site_files(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.csv"
    site_frame(rng, 120, ["icu", "cardio"]).to_csv(a, index=False)
    b = tmp_path / "b.parquet"
    site_frame(rng, 80, ["icu", "cardio"]).to_parquet(b)
    return {"hospital-a": a, "hospital-b": b}


def test_csv_and_parquet_sites_load_into_one_feature_space(site_files):
    ds = load_tabular_sites(SCHEMA, site_files, test_fraction=0.25, seed=1)
    assert ds.site_names == ["hospital-a", "hospital-b"]
    assert ds.feature_names == ["age", "smoker", "ward=cardio", "ward=icu"]
    assert ds.sites[0].num_train + ds.sites[0].num_test == 120
    assert set(np.unique(ds.sites[1].y_train)) == {0, 1}


def test_global_encoding_from_aggregates_equals_encoding_of_the_pooled_table():
    rng = np.random.default_rng(3)
    frames = {"a": site_frame(rng, 50, ["icu"]), "b": site_frame(rng, 70, ["icu", "onco"])}
    aggregates = [site_aggregates(name, f, SCHEMA) for name, f in frames.items()]
    federated, _ = combine(aggregates, SCHEMA, {})
    pooled_table = pd.concat(frames.values(), ignore_index=True)
    pooled, _ = combine([site_aggregates("all", pooled_table, SCHEMA)], SCHEMA, {})
    assert federated.vocabularies == pooled.vocabularies
    for column in ("age", "smoker"):
        assert federated.mean[column] == pytest.approx(pooled.mean[column])
        assert federated.std[column] == pytest.approx(pooled.std[column])
    np.testing.assert_allclose(
        encode(frames["b"], SCHEMA, federated), encode(frames["b"], SCHEMA, pooled), atol=1e-5
    )


def write(tmp_path, name, frame):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def problems(tmp_path, **frames):
    files = {site: write(tmp_path, f"{site}.csv", f) for site, f in frames.items()}
    return validate_sites(SCHEMA, files)


def test_missing_column_names_site_file_and_column(tmp_path):
    rng = np.random.default_rng(0)
    report = problems(
        tmp_path,
        good=site_frame(rng, 30, ["icu"]),
        bad=site_frame(rng, 30, ["icu"]).drop(columns="age"),
    )
    (issue,) = report.errors
    text = str(issue)
    assert (
        "site 'bad'" in text
        and "bad.csv" in text
        and "column 'age'" in text
        and "missing column" in text
    )


def test_text_in_numeric_column_reports_value_and_row(tmp_path):
    frame = site_frame(np.random.default_rng(0), 30, ["icu"])
    frame["age"] = frame["age"].astype(object)
    frame.loc[4, "age"] = "sixty"
    (issue,) = problems(tmp_path, s=frame).errors
    assert "non-numeric" in str(issue) and "'sixty' in row 6" in str(issue)


def test_all_missing_out_of_range_and_single_class_are_reported_together(tmp_path):
    rng = np.random.default_rng(0)
    empty_col = site_frame(rng, 30, ["icu"])
    empty_col["smoker"] = np.nan
    out_of_range = site_frame(rng, 30, ["icu"])
    out_of_range.loc[0, "age"] = 430
    one_class = site_frame(rng, 30, ["icu"])
    one_class["outcome"] = "no"
    report = problems(tmp_path, a=empty_col, b=out_of_range, c=one_class)
    messages = [str(i) for i in report.errors]
    assert any("site 'a'" in m and "entirely missing" in m for m in messages)
    assert any(
        "site 'b'" in m and "out of the declared range" in m and "430" in m for m in messages
    )
    assert any("site 'c'" in m and "only one class" in m for m in messages)
    with pytest.raises(DataValidationError, match="3 data problem"):
        report.raise_if_errors()


def test_category_seen_at_one_site_only_is_a_warning_or_an_error_when_strict(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "a": write(tmp_path, "a.csv", site_frame(rng, 40, ["icu"])),
        "b": write(tmp_path, "b.csv", site_frame(rng, 40, ["icu", "burns"])),
    }
    report = validate_sites(SCHEMA, files)
    assert report.ok
    assert any("burns" in str(w) and "site 'b'" in str(w) for w in report.warnings)
    assert not validate_sites(SCHEMA, files, strict=True).ok


def test_unreadable_and_missing_files_are_reported(tmp_path):
    bad = tmp_path / "x.xlsx"
    bad.write_text("?")
    report = validate_sites(SCHEMA, {"a": tmp_path / "none.csv", "b": bad})
    text = " ".join(str(i) for i in report.errors)
    assert "file not found" in text and "unsupported file type" in text


def test_schema_errors_name_the_field():
    from fedcare.core.errors import ConfigError

    with pytest.raises(ConfigError, match="positive"):
        TabularSchema.parse(
            {"target": {"column": "y"}, "features": [{"name": "a", "type": "numeric"}]}
        )
    with pytest.raises(ConfigError, match=r"unknown key 'features.0.maxx'; did you mean 'max'"):
        TabularSchema.parse(
            {
                "target": {"column": "y", "positive": [1]},
                "features": [{"name": "a", "type": "numeric", "maxx": 2}],
            }
        )
