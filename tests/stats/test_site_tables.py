"""Sites' rows as analysis tables (what a query's sites compute on): the shipped TCGA-BRCA
regions and hospitals' own checked files."""

import numpy as np
import pandas as pd
import pytest

from fedcare.data.schema import TabularSchema
from fedcare.data.tcga_brca import load_tcga_brca
from fedcare.stats.site_tables import tcga_brca_site_tables, user_site_table
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


@pytest.mark.parametrize(
    ("split", "counts"),
    [
        ("train", [248, 156, 164, 129, 129, 40]),
        ("test", [63, 40, 42, 33, 33, 11]),
        ("all", [311, 196, 206, 162, 162, 51]),
    ],
)
def test_one_table_per_region_with_the_rows_of_the_split(split, counts):
    tables = tcga_brca_site_tables(split)
    assert list(tables) == ["northeast", "south", "west", "midwest", "europe", "canada"]
    assert [len(t.frame) for t in tables.values()] == counts


def test_tables_name_the_survival_roles_and_hold_raw_columns_without_identifiers():
    table = tcga_brca_site_tables("train")["west"]
    assert (table.site, table.time, table.event, table.entry) == ("west", "T", "E", None)
    assert "pid" not in table.frame.columns and len(table.frame.columns) == 41
    assert all(dtype == np.float64 for dtype in table.frame.dtypes)
    # The same rows, in the same order, as the training view.
    west = load_tcga_brca().site("west")
    np.testing.assert_array_equal(table.frame["T"], west.time_train)
    np.testing.assert_array_equal(table.frame["E"], west.y_train)
    np.testing.assert_array_equal(table.frame["age_at_index"], west.x_train[:, 0])


def test_a_hospitals_survival_file_becomes_a_site_table_with_its_roles(tmp_path):
    schema = TabularSchema.parse(
        {
            "survival": {"time": "months", "event": "died", "entry": "entered"},
            "features": [{"name": "age", "type": "numeric"}],
        }
    )
    frame = pd.DataFrame(
        {"id": ["p1", "p2", "p3"], "age": [61, 70, 55], "entered": [0, 2, 1]}
        | {"months": [12.0, 30.5, 4.0], "died": [1, 0, 0]}
    )
    path = tmp_path / "south.csv"
    frame.to_csv(path, index=False)
    table, warnings = user_site_table(schema, "south", path)
    assert (table.site, table.time, table.event, table.entry) == (
        "south",
        "months",
        "died",
        "entered",
    )
    assert table.source == str(path) and warnings == []
    assert list(table.frame.columns) == ["age", "months", "entered", "died"]  # no identifier
    np.testing.assert_array_equal(table.frame["months"], [12.0, 30.5, 4.0])


def test_a_classification_file_is_described_by_class_name(tmp_path):
    schema = TabularSchema.parse(SCHEMA_DICT)
    frame = site_frame(0, 12)
    table, _ = user_site_table(schema, "a", write_csv(tmp_path, "a", frame))
    assert table.time is None and table.event is None
    expected = frame["outcome"].map({"yes": "positive", "no": "negative"})
    assert table.frame["outcome"].tolist() == expected.tolist()
    assert table.frame["ward"].tolist() == frame["ward"].tolist()
