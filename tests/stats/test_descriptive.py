"""Pooled descriptive statistics equal pandas on the pooled rows, without pooling them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.stats.descriptive_analysis import Correlation, CrossTab, Describe, Histogram
from fedcare.stats.descriptive_tableone import TableOne
from fedcare.stats.protocol import (
    AnalysisResult,
    DisclosureRules,
    Question,
    SiteTable,
    Step,
    answer,
    combine,
    run_in_process,
)

OPEN = DisclosureRules(min_cell=1, release_extremes=True)


def hospitals(seed: int, sizes: list[int], offset: float = 0.0) -> dict[str, SiteTable]:
    """Sites with different case mixes, missing values and a grouping variable."""
    rng = np.random.default_rng(seed)
    tables = {}
    for i, n in enumerate(sizes):
        frame = pd.DataFrame(
            {
                "age": rng.normal(55 + 5 * i, 10, n) + offset,
                "bmi": rng.normal(26, 4, n),
                "sex": rng.choice(["F", "M"], n),
                "stage": rng.choice(["I", "II", "III", "IV"], n, p=[0.4, 0.3, 0.2, 0.1]),
            }
        )
        frame.loc[rng.random(n) < 0.15, "bmi"] = np.nan
        frame.loc[rng.random(n) < 0.05, "sex"] = None
        tables[f"site{i}"] = SiteTable(f"site{i}", frame, source=f"site{i}.csv")
    return tables


def pooled(tables: dict[str, SiteTable]) -> pd.DataFrame:
    return pd.concat([t.frame for t in tables.values()], ignore_index=True)


@settings(max_examples=12)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(2, 40), min_size=1, max_size=5),
    offset=st.sampled_from([0.0, 1e6, -3e8]),
)
def test_count_mean_sd_min_max_equal_pandas_on_the_pooled_rows(seed, sizes, offset):
    tables = hospitals(seed, sizes, offset)
    rows = pooled(tables)
    result = run_in_process(
        Describe("d", ["age", "bmi"], by="sex", levels=["F", "M"], extremes=True), tables, OPEN
    )
    for v in ("age", "bmi"):
        for label, part in (("overall", rows), ("F", rows[rows.sex == "F"])):
            got = result.tables["variables"][v][label]
            x = part[v]
            assert got["n"] == x.count()
            assert got["missing"] == x.isna().sum()
            if x.count():
                assert got["mean"] == pytest.approx(x.mean(), rel=1e-12, abs=1e-9)
                assert got["min"] == x.min() and got["max"] == x.max()
            if x.count() > 1:  # two-step variance: exact even with a huge offset
                assert got["sd"] == pytest.approx(x.std(), rel=1e-9, abs=1e-9)


def test_each_site_gets_its_own_row_and_the_pooled_one_is_unchanged():
    tables = hospitals(1, [30, 25, 40])
    by_site = run_in_process(Describe("d", ["bmi"], by_site=True), tables, OPEN)
    summed = run_in_process(Describe("d", ["bmi"]), tables, OPEN)
    assert by_site.tables["variables"] == summed.tables["variables"]
    for name, table in tables.items():
        got = by_site.tables["by_site"][name]["bmi"]["overall"]
        assert got["n"] == table.frame.bmi.count()
        assert got["mean"] == pytest.approx(table.frame.bmi.mean(), rel=1e-12)
        assert got["sd"] == pytest.approx(table.frame.bmi.std(), rel=1e-9)


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(3, 60), min_size=1, max_size=4))
def test_histogram_counts_are_pooled_and_the_exact_quartiles_lie_in_the_stated_interval(
    seed, sizes
):
    tables = hospitals(seed, sizes)
    rows = pooled(tables)
    edges = np.linspace(20, 100, 17)
    result = run_in_process(Histogram("h", "age", edges=edges), tables, OPEN)
    group = result.tables["groups"]["overall"]
    inside = rows.age[(rows.age >= 20) & (rows.age <= 100)]
    assert group["counts"][1:-1] == np.histogram(inside, edges)[0].tolist()
    assert group["counts"][0] == (rows.age < 20).sum()
    for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
        q = group[name]
        if q["estimate"] is None:  # the quantile falls outside the grid
            continue
        low, high = q["interval"]
        assert low <= rows.age.quantile(p) <= high
        assert low <= q["estimate"] <= high
        assert q["error_bound"] == pytest.approx(high - low)


def test_a_histogram_without_a_grid_needs_extremes_and_says_to_declare_the_grid():
    with pytest.raises(ConfigError, match="declare the grid"):
        Histogram("h", "age", bins=10, rules=DisclosureRules(release_extremes=False))
    tables = hospitals(2, [30, 30])
    agreed = run_in_process(Histogram("h", "age", bins=8, rules=OPEN), tables, OPEN)
    rows = pooled(tables)
    assert agreed.tables["edges"][0] == rows.age.min()
    assert agreed.tables["edges"][-1] == rows.age.max()
    assert sum(agreed.tables["groups"]["overall"]["counts"]) == len(rows)
    strict = {"site0": OPEN, "site1": DisclosureRules(min_cell=1)}  # site1 keeps extremes
    with pytest.raises(ProtocolError, match="site1 do not release extremes"):
        run_in_process(Histogram("h", "age", bins=8, rules=OPEN), tables, strict)


def test_crosstab_equals_pandas_with_a_catch_all_for_missing_and_undeclared():
    tables = hospitals(3, [50, 70])
    rows = pooled(tables)
    result = run_in_process(
        CrossTab("c", "stage", ["I", "II", "III"], "sex", ["F", "M"]), tables, OPEN
    )
    expected = pd.crosstab(rows.stage, rows.sex)
    counts = result.tables["counts"]
    for i, stage in enumerate(["I", "II", "III"]):
        for j, sex in enumerate(["F", "M"]):
            assert counts[i][j] == expected.loc[stage, sex]
    assert counts[3][-1] == (rows.stage == "IV").sum()  # not declared: (missing)
    assert counts[-1][2] == rows.sex.isna().sum()
    assert counts[-1][-1] == len(rows)


def test_correlation_uses_complete_cases_and_equals_pandas():
    tables = hospitals(4, [40, 35, 20])
    rows = pooled(tables)[["age", "bmi"]].dropna()
    result = run_in_process(Correlation("r", ["age", "bmi"]), tables, OPEN)
    assert result.tables["method"] == "pearson, complete cases"
    assert result.tables["n"] == len(rows)
    np.testing.assert_allclose(result.tables["matrix"], rows.corr().to_numpy(), rtol=1e-12)


def test_table_one_reads_like_the_first_table_of_a_paper():
    # Sex always recorded: a few missing would be a small (other) column, and complementary
    # suppression would then rightly withhold a site's F or M column too.
    tables = {
        name: SiteTable(name, t.frame.dropna(subset=["sex"]))
        for name, t in hospitals(5, [120, 90, 150]).items()
    }
    rows = pooled(tables)
    result = run_in_process(
        TableOne(
            "t1",
            numeric=["age"],
            categorical={"stage": ["I", "II", "III", "IV"]},
            by="sex",
            levels=["F", "M"],
            edges={"age": list(range(0, 130, 10))},
        ),
        tables,
        DisclosureRules(),
    )
    assert result.tables["columns"] == ["overall", "F", "M"]
    cells = {(r["variable"], r["statistic"]): r["cells"] for r in result.tables["rows"]}
    women = rows[rows.sex == "F"]
    assert cells["age", "mean (SD)"]["F"] == f"{women.age.mean():.2f} ({women.age.std():.2f})"
    share = 100 * (rows.stage == "II").mean()
    assert cells["stage", "II, n (%)"]["overall"] == f"{(rows.stage == 'II').sum()} ({share:.1f}%)"
    # Tail bins are small cells at every site, so the quartile intervals are widened to
    # hold the withheld rows wherever they lie, and still hold pandas' quartiles.
    parts = result.tables["parts"]["histogram:age"]["groups"]
    for column, frame in (("overall", rows), ("F", women)):
        for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
            low, high = parts[column][name]["interval"]
            assert low <= frame.age.quantile(p) <= high
            assert parts[column][name]["error_bound"] >= 10.0
    json.dumps(result.tables)  # metrics.json carries it as is


def test_an_analysis_resumes_from_a_json_memo_to_the_same_result():
    tables = hospitals(6, [30, 40])
    analysis = TableOne("t1", numeric=["age", "bmi"], categorical={"stage": ["I", "II"]})
    step = analysis.start()
    while True:
        step = Step(step.question, json.loads(json.dumps(step.memo)))  # a checkpoint
        releases = {s: answer(step.question, t, OPEN) for s, t in tables.items()}
        outcome = analysis.advance(step, combine(step.question, releases))
        if isinstance(outcome, AnalysisResult):
            break
        step = outcome
    assert outcome == run_in_process(analysis, tables, OPEN)


def test_a_site_permits_only_the_questions_its_plan_asks():
    analysis = Describe("d", ["age"], by="sex", levels=["F", "M"])
    first = analysis.start().question
    assert analysis.permits(first)
    assert not analysis.permits(
        Question("d", first.step, {**first.params, "variables": ["hiv"]}, "sum")
    )
    assert not analysis.permits(Question("other", first.step, first.params, "sum"))
    assert not analysis.permits(Question("d", "describe.extremes", first.params, "per_site"))


def test_bad_input_names_the_site_file_row_and_column():
    frame = pd.DataFrame({"age": [50, "sixty", 70]})
    table = SiteTable("st-mary", frame, source="st_mary.csv")
    with pytest.raises(
        ConfigError, match=r"site st-mary: st_mary.csv row 2, column 'age'.*'sixty'"
    ):
        run_in_process(Describe("d", ["age"]), {"st-mary": table}, OPEN)
    with pytest.raises(ConfigError, match=r"site st-mary: the plan asks for column 'bmi'"):
        run_in_process(Describe("d", ["bmi"]), {"st-mary": table}, OPEN)


def test_a_plan_option_that_would_be_ignored_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"bounds given for \['bmi'\]"):
        Describe("d", ["age"], bounds={"bmi": [10, 60]})
    with pytest.raises(ConfigError, match="grouping by 'sex' needs its declared levels"):
        Describe("d", ["age"], by="sex")
    with pytest.raises(ConfigError, match=r"levels \['F'\] given without 'by'"):
        Histogram("h", "age", edges=[0, 50, 100], levels=["F"])
    with pytest.raises(ConfigError, match="both edges and bins"):
        Histogram("h", "age", edges=[0, 50, 100], bins=4)
    with pytest.raises(ConfigError, match="col_levels"):
        CrossTab("c", "stage", ["I", "II"], None, ["F"])
    with pytest.raises(ConfigError, match=r"levels of 'stage' repeat \['I'\]"):
        CrossTab("c", "stage", ["I", "II", "I"])
    with pytest.raises(ConfigError, match="strictly increasing"):
        Histogram("h", "age", edges=[0, 50, 50])


def test_table_one_by_site_adds_a_column_per_hospital():
    tables = hospitals(8, [80, 120])
    result = run_in_process(
        TableOne(
            "t1",
            numeric=["bmi"],
            categorical={"stage": ["I", "II", "III", "IV"]},
            edges={"bmi": list(range(0, 61, 5))},
            by_site=True,
        ),
        tables,
        DisclosureRules(),
    )
    assert result.tables["columns"] == ["overall", "site site0", "site site1"]
    cells = {(r["variable"], r["statistic"]): r["cells"] for r in result.tables["rows"]}
    for name, table in tables.items():
        bmi, stage = table.frame.bmi, table.frame.stage
        assert cells["bmi", "mean (SD)"][f"site {name}"] == f"{bmi.mean():.2f} ({bmi.std():.2f})"
        assert cells["bmi", "missing, n"][f"site {name}"] == str(bmi.isna().sum())
        share = 100 * (stage == "I").mean()
        assert (
            cells["stage", "I, n (%)"][f"site {name}"] == f"{(stage == 'I').sum()} ({share:.1f}%)"
        )
    rows = pooled(tables)
    assert cells["bmi", "mean (SD)"]["overall"] == f"{rows.bmi.mean():.2f} ({rows.bmi.std():.2f})"
    json.dumps(result.tables)
