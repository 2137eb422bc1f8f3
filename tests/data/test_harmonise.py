"""Harmonisation from per-site aggregates equals harmonisation of the pooled table."""

import json

import numpy as np
import pandas as pd
import pytest

from fedcare.data.harmonise import (
    GlobalEncoding,
    SiteAggregates,
    combine,
    encode,
    site_aggregates,
)
from fedcare.data.schema import TabularSchema
from tests.data.conftest import SCHEMA_DICT, site_frame


@pytest.fixture
def frames() -> dict[str, pd.DataFrame]:
    return {
        "a": site_frame(3, 50, ("icu",)),
        "b": site_frame(4, 70, ("icu", "onco")),
        "c": site_frame(5, 9, ("cardio",)),
    }


def test_encoding_from_aggregates_equals_encoding_from_the_pooled_table(schema, frames):
    federated = combine([site_aggregates(s, f, schema) for s, f in frames.items()], schema)
    pooled_table = pd.concat(frames.values(), ignore_index=True)
    pooled = combine([site_aggregates("all", pooled_table, schema)], schema)
    assert federated.vocabularies == pooled.vocabularies == {"ward": ["cardio", "icu", "onco"]}
    for column in ("age", "smoker", "bmi"):
        assert federated.mean[column] == pytest.approx(pooled.mean[column])
        assert federated.std[column] == pytest.approx(pooled.std[column])
    for frame in frames.values():
        np.testing.assert_allclose(
            encode(frame, schema, federated), encode(frame, schema, pooled), atol=1e-5
        )
    # And the pooled encoding is a plain z-score: mean 0, std 1 over all rows together.
    stacked = np.concatenate([encode(f, schema, federated) for f in frames.values()])
    age = federated.feature_names(schema).index("age")
    assert stacked[:, age].mean() == pytest.approx(0, abs=1e-5)
    assert stacked[:, age].std() == pytest.approx(1, abs=1e-4)


def test_one_hot_uses_the_global_vocabulary_at_every_site(schema, frames):
    encoding = combine([site_aggregates(s, f, schema) for s, f in frames.items()], schema)
    names = encoding.feature_names(schema)
    assert names == ["age", "smoker", "ward=cardio", "ward=icu", "ward=onco", "bmi"]
    x = encode(frames["c"], schema, encoding)  # site c only ever sees "cardio"
    assert x.shape == (9, 6) and x.dtype == np.float32
    assert np.all(x[:, names.index("ward=cardio")] == 1)
    assert np.all(x[:, names.index("ward=onco")] == 0)


def test_missing_numbers_get_the_global_mean_and_an_optional_indicator(frames):
    schema = TabularSchema.parse(SCHEMA_DICT | {"missing_indicator": True})
    encoding = combine([site_aggregates(s, f, schema) for s, f in frames.items()], schema)
    names = encoding.feature_names(schema)
    assert names[-2:] == ["bmi", "bmi_missing"]
    x = encode(frames["a"], schema, encoding)
    gaps = frames["a"]["bmi"].isna().to_numpy()
    assert gaps.any() and not np.isnan(x).any()
    np.testing.assert_array_equal(x[:, -1], gaps.astype(np.float32))
    assert np.all(x[gaps, -2] == 0)


def test_aggregates_hold_no_rows_and_travel_as_json(schema, frames):
    agg = site_aggregates("b", frames["b"], schema)
    assert agg.rows == 70 and agg.numeric["bmi"].missing == int(frames["b"]["bmi"].isna().sum())
    wire = json.loads(json.dumps(agg.to_dict()))
    assert SiteAggregates.from_dict(wire) == agg
    encoding = combine([agg], schema)
    assert GlobalEncoding.from_dict(json.loads(json.dumps(encoding.to_dict()))) == encoding
