"""One hospital's table in a deployed study: the plan's data section, checks and encoding."""

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.schema import TabularSchema
from fedcare.data.site_table import (
    SiteTableSpec,
    check_site_table,
    load_site_table,
    schema_hash,
)
from fedcare.data.tabular import load_tabular_sites
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SCHEMA_DICT | {"missing_indicator": True}))
    return path


@pytest.fixture
def spec(schema_file):
    return SiteTableSpec.from_study({"schema": str(schema_file), "test_fraction": 0.25, "seed": 3})


def test_each_site_encodes_exactly_what_the_simulator_gives_with_per_site_normalisation(
    tmp_path, schema_file, spec
):
    files = {
        "a": write_csv(tmp_path, "a", site_frame(0, 90)),
        "b": write_csv(tmp_path, "b", site_frame(1, 60, wards=("onco", "icu"))),
    }
    simulated = load_tabular_sites(schema_file, files, test_fraction=0.25, seed=3, normalise="site")
    assert simulated.feature_names == spec.feature_names
    for index, (site, path) in enumerate(files.items()):
        deployed = load_site_table(spec, site, path, index)
        expected = simulated.site(site)
        np.testing.assert_array_equal(deployed.x_train, expected.x_train)
        np.testing.assert_array_equal(deployed.x_test, expected.x_test)
        np.testing.assert_array_equal(deployed.y_train, expected.y_train)
        # z-scored with the site's own training rows: mean 0 on its numeric columns
        assert deployed.x_train[:, spec.feature_names.index("age")].mean() == pytest.approx(
            0, abs=1e-5
        )


def test_per_site_normalisation_fixes_the_columns_from_the_schema_alone(tmp_path, schema_file):
    files = {
        "a": write_csv(tmp_path, "a", site_frame(0, 90)),
        "b": write_csv(tmp_path, "b", site_frame(1, 60)),
    }
    pooled = load_tabular_sites(schema_file, files, normalise="pooled")
    per_site = load_tabular_sites(schema_file, files, normalise="site")
    # Pooled: an indicator where some site has gaps (bmi). Per site: every numeric or binary
    # feature gets one, since no site knows where the others have gaps.
    assert [f for f in pooled.feature_names if f.endswith("_missing")] == ["bmi_missing"]
    assert [f for f in per_site.feature_names if f.endswith("_missing")] == [
        "age_missing",
        "smoker_missing",
        "bmi_missing",
    ]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(SCHEMA_DICT))
    pooled = load_tabular_sites(plain, files, normalise="pooled")
    per_site = load_tabular_sites(plain, files, normalise="site")
    assert pooled.feature_names == per_site.feature_names
    assert not np.allclose(pooled.site("b").x_train, per_site.site("b").x_train)


def test_the_plan_section_round_trips_and_refuses_a_tampered_schema(spec):
    raw = spec.to_dict()
    assert raw["schema_hash"] == schema_hash(spec.schema)
    assert raw["encoding"]["features"] == spec.feature_names
    again = SiteTableSpec.from_dict(raw)
    assert again == spec
    tampered = {**raw, "schema": {**raw["schema"], "missing_indicator": False}}
    with pytest.raises(ConfigError, match="hashes to"):
        SiteTableSpec.from_dict(tampered)
    with pytest.raises(ConfigError, match=r"encoding\.features"):
        SiteTableSpec.from_dict({**raw, "encoding": {**raw["encoding"], "features": ["x"]}})
    with pytest.raises(ConfigError, match="expected kind 'table'"):
        SiteTableSpec.from_dict(None)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([0, 1, 120]), st.sampled_from([0.0, 1.0]))
def test_schema_hash_does_not_depend_on_how_a_number_was_spelled(low, as_float):
    spelled = {"name": "age", "type": "numeric", "min": low + as_float * 0.0}
    features = [spelled, *SCHEMA_DICT["features"][1:]]
    a = TabularSchema.parse(SCHEMA_DICT | {"features": features})
    b = TabularSchema.parse(
        SCHEMA_DICT | {"features": [{**spelled, "min": float(low)}, *features[1:]]}
    )
    assert schema_hash(a) == schema_hash(b)


def test_deployment_needs_declared_categories(tmp_path):
    features = [*SCHEMA_DICT["features"][:2], {"name": "ward", "type": "categorical"}]
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(SCHEMA_DICT | {"features": features}))
    with pytest.raises(ConfigError, match=r"\['ward'\] declare no 'categories'"):
        SiteTableSpec.from_study({"schema": str(path)})


def test_a_bad_column_is_reported_with_file_column_expected_and_found(tmp_path, spec):
    frame = site_frame(0, 40)
    frame["age"] = frame["age"].astype(object)
    frame.loc[3, "age"] = "old"
    path = write_csv(tmp_path, "a", frame.drop(columns="smoker"))
    check = check_site_table(spec, "a", path, 0)
    assert not check.ok
    text = "\n".join(str(i) for i in check.errors)
    assert "missing column" in text and "'smoker'" in text and str(path) in text
    assert "non-numeric" in text and "'age'" in text and "line 5" in text
    with pytest.raises(DataValidationError, match="2 data problem"):
        load_site_table(spec, "a", path, 0)


def test_an_unreadable_file_is_a_problem_not_a_crash(tmp_path, spec):
    check = check_site_table(spec, "a", tmp_path / "nope.csv", 0)
    assert not check.ok and "file not found" in str(check.errors[0])


def test_the_plan_for_each_run_seed_carries_that_seeds_split_and_encodes_as_the_simulator(
    tmp_path, schema_file
):
    files = {
        "a": write_csv(tmp_path, "a", site_frame(0, 90)),
        "b": write_csv(tmp_path, "b", site_frame(1, 60)),
    }
    params = {"schema": str(schema_file), "files": {k: str(v) for k, v in files.items()}}
    specs = {seed: SiteTableSpec.from_study(params, run_seed=seed) for seed in (1, 2)}
    assert [(s.split_seed, s.split_source) for s in specs.values()] == [
        (1, "run seed"),
        (2, "run seed"),
    ]
    assert specs[1].to_dict()["split"] == {"test_fraction": 0.3, "seed": 1, "source": "run seed"}
    for seed, spec in specs.items():
        assert SiteTableSpec.from_dict(spec.to_dict()) == spec
        # The simulator's default normalisation with the same split seed: identical rows.
        simulated = load_tabular_sites(schema_file, files, seed=seed)
        for index, (site, path) in enumerate(files.items()):
            deployed = load_site_table(spec, site, path, index)
            np.testing.assert_array_equal(deployed.x_train, simulated.site(site).x_train)
            np.testing.assert_array_equal(deployed.y_test, simulated.site(site).y_test)
    one, two = (load_site_table(s, "a", files["a"], 0) for s in specs.values())
    assert not np.array_equal(one.x_test, two.x_test)  # two seeds, two splits

    pinned = {
        seed: SiteTableSpec.from_study(params | {"seed": 9}, run_seed=seed) for seed in (1, 2)
    }
    assert pinned[1] == pinned[2]
    assert (pinned[1].split_seed, pinned[1].split_source) == (9, "dataset.params.seed")


def test_a_plan_with_an_unknown_split_source_is_refused(spec):
    raw = spec.to_dict()
    raw["split"] = {**raw["split"], "source": "coin toss"}
    with pytest.raises(ConfigError, match=r"split\.source: expected one of .*'run seed'"):
        SiteTableSpec.from_dict(raw)
    del raw["split"]["source"]  # plans written before the source was recorded still parse
    assert SiteTableSpec.from_dict(raw).split_source is None
