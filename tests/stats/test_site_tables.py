"""The shipped TCGA-BRCA regions as analysis tables (what a query's sites compute on)."""

import numpy as np
import pytest

from fedcare.data.tcga_brca import load_tcga_brca
from fedcare.stats.site_tables import tcga_brca_site_tables


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
