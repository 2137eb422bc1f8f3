"""Small cells never leave a site, and cannot be recovered from what does."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.stats.descriptive import site_crosstab, site_sums
from fedcare.stats.descriptive_analysis import CrossTab, Describe, Histogram
from fedcare.stats.descriptive_tableone import TableOne
from fedcare.stats.disclosure import (
    SUPPRESSED_SUFFIX,
    complete_suppression,
    site_rules,
    small,
)
from fedcare.stats.protocol import DisclosureRules, Question, Release, SiteTable
from fedcare.stats.secure import run_secure

COUNT_KEYS = ("counts", ":n", ":missing")


def test_a_site_s_own_rules_win_and_the_plan_can_only_make_them_stricter():
    own = DisclosureRules(min_cell=10, release_extremes=False)
    assert site_rules(DisclosureRules(min_cell=3, release_extremes=True), own) == own
    assert site_rules(DisclosureRules(min_cell=20), own).min_cell == 20
    assert site_rules(DisclosureRules(min_cell=3), None).min_cell == 3


def test_small_means_one_to_min_cell_minus_one_and_zero_is_released():
    assert small([0, 1, 4, 5, 9], 5).tolist() == [False, True, True, False, False]


def test_a_group_of_three_patients_releases_neither_its_n_nor_its_sum():
    frame = pd.DataFrame(
        {
            "age": [50.0] * 20 + [70.0, 71.0, 72.0] + [40.0] * 6,
            "sex": ["F"] * 20 + ["M"] * 3 + [None] * 6,
        }
    )
    params = {"variables": ["age"], "by": "sex", "levels": ["F", "M"]}
    release = site_sums(params, SiteTable("st-anne", frame), DisclosureRules())
    # Columns: overall, F, M, (other). M is small; since overall = F + M + (other), the
    # smallest other part, (other), is withheld with it so M cannot be recovered.
    assert release.values["age:n"].tolist() == [29.0, 20.0, 0.0, 0.0]
    assert release.values["age:sum"].tolist() == [1000.0 + 213.0 + 240.0, 1000.0, 0.0, 0.0]
    assert release.values["age:sum" + SUPPRESSED_SUFFIX].tolist() == [0, 0, 1, 1]
    assert any("withheld M (fewer than min_cell=5 rows)" in line for line in release.suppressed)
    assert any("also withheld (other) (complementary" in line for line in release.suppressed)


def test_one_suppressed_cell_in_a_row_takes_a_second_one_with_it():
    # 2 x 2 with totals; cell (0, 0) = 2 is small. Without a second suppression it would be
    # row total - (0, 1).
    frame = pd.DataFrame(
        {
            "a": ["x"] * 2 + ["x"] * 9 + ["y"] * 7 + ["y"] * 8,
            "b": ["u"] * 2 + ["v"] * 9 + ["u"] * 7 + ["v"] * 8,
        }
    )
    params = {"row": "a", "row_levels": ["x", "y"], "col": "b", "col_levels": ["u", "v"]}
    release = site_crosstab(params, SiteTable("s", frame), DisclosureRules())
    withheld = release.values["counts" + SUPPRESSED_SUFFIX][:2, :2]
    assert withheld.tolist() == [[1, 1], [1, 1]]  # the row, then the columns, then row y
    assert any("complementary" in line for line in release.suppressed)


@settings(max_examples=25)
@given(
    cells=st.lists(st.lists(st.integers(0, 12), min_size=2, max_size=4), min_size=2, max_size=4),
    min_cell=st.integers(2, 6),
)
def test_no_total_ever_gives_away_a_withheld_crosstab_cell(cells, min_cell):
    width = min(len(row) for row in cells)
    counts = np.array([row[:width] for row in cells])
    rows = [f"r{i}" for i in range(counts.shape[0])]
    cols = [f"c{j}" for j in range(width)]
    a, b = [], []
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            a += [r] * int(counts[i, j])
            b += [c] * int(counts[i, j])
    frame = pd.DataFrame({"a": a, "b": b}, dtype=object)
    params = {"row": "a", "row_levels": rows, "col": "b", "col_levels": cols}
    release = site_crosstab(params, SiteTable("s", frame), DisclosureRules(min_cell=min_cell))
    flags = release.values["counts" + SUPPRESSED_SUFFIX] > 0
    released = release.values["counts"]
    assert not small(released[~flags], min_cell).any()
    for line in [*flags, *flags.T]:  # every row and column with its total
        assert line.sum() != 1
    full = np.zeros_like(released)
    full[: counts.shape[0], :width] = counts
    full[:, -1] = full[:, :-1].sum(axis=1)
    full[-1, :] = full[:-1, :].sum(axis=0)
    assert (released[~flags] == full[~flags]).all()


def test_complementary_suppression_withholds_the_total_when_every_other_part_is_zero():
    values = np.array([3.0, 3.0, 0.0, 0.0])  # total = 3 + 0 + 0
    mask = complete_suppression(values, small(values, 5) & (np.arange(4) == 1), [(0, [1, 2, 3])])
    assert mask.tolist() == [True, True, False, False]


def count_entries(release: Release) -> list[float]:
    out: list[float] = []
    for key, value in release.values.items():
        if key.endswith(SUPPRESSED_SUFFIX):
            continue
        if key == "counts" or key.endswith(COUNT_KEYS[1:]):
            out += np.ravel(value).tolist()
    return out


def test_every_release_of_a_query_with_suppression_on_has_no_count_below_the_threshold():
    rng = np.random.default_rng(7)
    tables = {}
    for i, n in enumerate([14, 60, 200]):
        frame = pd.DataFrame(
            {
                "age": rng.normal(60, 12, n),
                "sex": rng.choice(["F", "M"], n, p=[0.7, 0.3]),
                "stage": rng.choice(["I", "II", "III", "IV"], n, p=[0.5, 0.3, 0.15, 0.05]),
            }
        )
        tables[f"h{i}"] = SiteTable(f"h{i}", frame)
    own = {
        "h0": DisclosureRules(min_cell=3),
        "h1": DisclosureRules(min_cell=8),
        "h2": DisclosureRules(),
    }
    plan = DisclosureRules(min_cell=5)
    releases: list[tuple[str, Question, Release]] = []
    analyses = [
        TableOne(
            "t1",
            numeric=["age"],
            categorical={"stage": ["I", "II", "III", "IV"]},
            by="sex",
            levels=["F", "M"],
            edges={"age": list(range(0, 125, 5))},
        ),
        Describe("d", ["age"], by="stage", levels=["I", "II", "III", "IV"], by_site=True),
        Histogram("h", "age", edges=list(range(20, 101, 2)), by="sex", levels=["F", "M"]),
        CrossTab("c", "stage", ["I", "II", "III", "IV"], "sex", ["F", "M"], by_site=True),
    ]
    for analysis in analyses:
        run_secure(analysis, tables, own, plan=plan, on_release=lambda *r: releases.append(r))
    threshold = {"h0": 5, "h1": 8, "h2": 5}
    scanned = 0
    for site, _question, release in releases:
        counts = count_entries(release)
        scanned += len(counts)
        assert not small(counts, threshold[site]).any(), (site, _question.step)
    assert scanned > 1000
    assert any(release.suppressed for _, _, release in releases)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(5, 80), min_size=2, max_size=4))
def test_quartile_intervals_still_hold_the_exact_quartiles_when_bins_are_withheld(seed, sizes):
    rng = np.random.default_rng(seed)
    tables = {
        f"h{i}": SiteTable(f"h{i}", pd.DataFrame({"x": rng.gamma(2.0, 10.0, n)}))
        for i, n in enumerate(sizes)
    }
    pooled = pd.concat([t.frame.x for t in tables.values()])
    edges = [float(e) for e in np.linspace(0, pooled.max() + 1, 12)]
    result = run_secure(Histogram("h", "x", edges=edges), tables, DisclosureRules(min_cell=5))
    group = result.tables["groups"]["overall"]
    for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
        if group[name]["interval"] is not None:
            low, high = group[name]["interval"]
            assert low <= pooled.quantile(p) <= high


def test_a_withheld_n_takes_its_missing_count_along_since_another_variable_gives_the_rows():
    # 20 women: age known for all (n = 20 released), bmi for only 3; releasing bmi's
    # missing count (17) would give bmi's n as 20 - 17.
    frame = pd.DataFrame(
        {
            "age": np.arange(40.0),
            "bmi": [25.0] * 3 + [np.nan] * 17 + [22.0] * 20,
            "sex": ["F"] * 20 + ["M"] * 20,
        }
    )
    params = {"variables": ["age", "bmi"], "by": "sex", "levels": ["F", "M"]}
    release = site_sums(params, SiteTable("st-anne", frame), DisclosureRules())
    assert release.values["age:n"].tolist() == [40, 20, 20, 0]
    assert release.values["bmi:n" + SUPPRESSED_SUFFIX].tolist()[1] == 1
    assert release.values["bmi:missing" + SUPPRESSED_SUFFIX].tolist()[1] == 1
    assert release.values["bmi:missing"][1] == 0.0
