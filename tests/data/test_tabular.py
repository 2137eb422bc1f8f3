"""Loading a hospital's own CSV or Parquet tables into one federated dataset."""

import numpy as np
import pytest
import yaml

from fedcare.data.schema import TabularSchema
from fedcare.data.tabular import RunSplit, load_tabular_sites, run_split
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


@pytest.fixture
def site_files(tmp_path):
    a = write_csv(tmp_path, "a", site_frame(0, 120))
    b = tmp_path / "b.parquet"
    site_frame(1, 80).to_parquet(b)
    return {"hospital-a": a, "hospital-b": b}


def test_csv_and_parquet_sites_load_into_one_feature_space(schema, site_files):
    ds = load_tabular_sites(schema, site_files, test_fraction=0.25, seed=1)
    assert ds.site_names == ["hospital-a", "hospital-b"]
    assert ds.feature_names == ["age", "smoker", "ward=cardio", "ward=icu", "ward=onco", "bmi"]
    assert ds.input_shape == (6,) and ds.task == "binary"
    a, b = ds.sites
    assert (a.num_train + a.num_test, b.num_train + b.num_test) == (120, 80)
    assert a.num_test == pytest.approx(30, abs=1)
    for site in ds.sites:
        assert set(np.unique(site.y_train)) == {0, 1} and set(np.unique(site.y_test)) == {0, 1}
        assert np.isfinite(site.x_train).all() and np.isfinite(site.x_test).all()


def test_split_is_stratified_and_seeded(schema, site_files):
    a = load_tabular_sites(schema, site_files, seed=5)
    b = load_tabular_sites(schema, site_files, seed=5)
    c = load_tabular_sites(schema, site_files, seed=6)
    np.testing.assert_array_equal(a.sites[0].x_test, b.sites[0].x_test)
    assert not np.array_equal(a.sites[0].x_test, c.sites[0].x_test)
    site = a.sites[0]
    assert site.y_train.mean() == pytest.approx(site.y_test.mean(), abs=0.05)


def test_declared_split_column_and_schema_file_path(tmp_path):
    frame = site_frame(0, 50)
    frame["set"] = ["test" if i % 5 == 0 else "train" for i in range(50)]
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SCHEMA_DICT | {"split_column": "set"}))
    ds = load_tabular_sites(path, {"a": write_csv(tmp_path, "a", frame)})
    assert (ds.sites[0].num_train, ds.sites[0].num_test) == (40, 10)


def test_multiclass_target_with_declared_classes(tmp_path):
    schema = TabularSchema.parse(
        SCHEMA_DICT | {"target": {"column": "grade", "classes": [0, 1, 2]}}
    )
    frame = site_frame(0, 60).drop(columns="outcome")
    frame["grade"] = np.arange(60) % 3
    ds = load_tabular_sites(schema, {"a": write_csv(tmp_path, "a", frame)})
    assert (ds.task, ds.num_classes, ds.class_names) == ("multiclass", 3, ["0", "1", "2"])
    assert set(np.unique(ds.sites[0].y_train)) == {0, 1, 2}


def test_each_run_seed_splits_by_itself_unless_the_study_or_the_schema_fixes_the_split(schema):
    # Nothing pinned: the run seed is the split seed, so a study's seeds vary the split.
    assert run_split(schema, None, 0) == RunSplit("run seed", 0)
    assert run_split(schema, None, 1) == RunSplit("run seed", 1)
    assert run_split(schema, None, 1).follows_run
    # dataset.params.seed pins it (before the schema's own seed); a split column declares it.
    seeded = TabularSchema.parse(SCHEMA_DICT | {"seed": 4})
    assert run_split(schema, 7, 1) == run_split(seeded, 7, 2) == RunSplit("dataset.params.seed", 7)
    assert run_split(seeded, None, 1) == run_split(seeded, None, 2) == RunSplit("schema seed", 4)
    declared = TabularSchema.parse(SCHEMA_DICT | {"split_column": "set"})
    assert run_split(declared, 7, 1) == RunSplit("split column", None)
    assert not run_split(declared, None, 1).follows_run


def test_the_default_normalisation_is_each_sites_own_as_deployed(schema, site_files):
    default = load_tabular_sites(schema, site_files, seed=2)
    per_site = load_tabular_sites(schema, site_files, seed=2, normalise="site")
    pooled = load_tabular_sites(schema, site_files, seed=2, normalise="pooled")
    assert default.extra["normalise"] == "site"
    for a, b, c in zip(default.sites, per_site.sites, pooled.sites, strict=True):
        np.testing.assert_array_equal(a.x_train, b.x_train)
        assert not np.allclose(a.x_train, c.x_train)
        # z-scored with the site's own training rows: mean 0 on its numeric column
        assert a.x_train[:, default.feature_names.index("age")].mean() == pytest.approx(0, abs=1e-5)
