"""Federated Kaplan-Meier and log-rank: the combined curves are the pooled ones (lifelines)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test

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
from fedcare.stats.survival import KaplanMeier, curves
from fedcare.stats.survival_km import merge_small_cells
from tests.stats.survival_data import pooled, survival_sites, tables_of, with_delayed_entry

OFF = DisclosureRules(min_cell=1)
ARMS = ["control", "drug", "surgery"]


def assert_equals_lifelines(curve_result: AnalysisResult, name: str, rows: pd.DataFrame) -> None:
    """The federated curve equals lifelines' pooled fit at every time of its timeline."""
    reference = KaplanMeierFitter().fit(rows["T"], rows["E"])
    timeline = reference.survival_function_.index.to_numpy()
    survival, lower, upper = curves(curve_result)[name].at(timeline)
    np.testing.assert_allclose(
        survival, reference.survival_function_.to_numpy()[:, 0], rtol=0, atol=1e-12
    )
    ci = reference.confidence_interval_.to_numpy()
    np.testing.assert_allclose(lower, ci[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(upper, ci[:, 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("sizes", "tie_days", "censoring"),
    [
        ([40, 55, 70], 0.0, 0.3),
        ([30, 80, 25, 60], 30.0, 0.4),
        ([12, 9, 15], 90.0, 0.1),
        ([50, 50, 50], 7.0, 0.8),
    ],
)
def test_exact_curves_overall_and_by_arm_equal_the_pooled_lifelines_fits(
    sizes: list[int], tie_days: float, censoring: float
) -> None:
    frames = survival_sites(sizes, seed=len(sizes), tie_days=tie_days, censoring=censoring)
    result = run_in_process(KaplanMeier("km", group="arm", levels=ARMS), tables_of(frames), OFF)
    rows = pooled(frames)
    assert_equals_lifelines(result, "overall", rows)
    for arm in ARMS:
        assert_equals_lifelines(result, arm, rows[rows["arm"] == arm])
    reference = multivariate_logrank_test(rows["T"], rows["arm"], rows["E"])
    test = result.tables["logrank"]
    assert test["statistic"] == pytest.approx(reference.test_statistic, rel=1e-9)
    assert test["p_value"] == pytest.approx(reference.p_value, rel=1e-9)
    assert test["df"] == 2


def test_two_group_logrank_equals_lifelines_logrank_test() -> None:
    frames = survival_sites([60, 45, 70], seed=3, tie_days=14.0)
    rows = pooled(frames)
    result = run_in_process(
        KaplanMeier("km", group="sex", levels=["0.0", "1.0"]), tables_of(frames), OFF
    )
    women, men = rows[rows["sex"] == 0], rows[rows["sex"] == 1]
    reference = logrank_test(women["T"], men["T"], women["E"], men["E"])
    assert result.tables["logrank"]["statistic"] == pytest.approx(
        reference.test_statistic, rel=1e-9
    )
    assert result.tables["logrank"]["p_value"] == pytest.approx(reference.p_value, rel=1e-9)


@settings(max_examples=12)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=3, max_size=5),
    tie_days=st.sampled_from([0.0, 30.0, 200.0]),
    censoring=st.floats(0.0, 0.9),
    seed=st.integers(0, 10_000),
)
def test_property_exact_km_and_logrank_equal_pooled(
    sizes: list[int], tie_days: float, censoring: float, seed: int
) -> None:
    frames = survival_sites(sizes, seed=seed, tie_days=tie_days, censoring=censoring)
    rows = pooled(frames)
    if rows["E"].sum() == 0:
        return  # no event anywhere: nothing to estimate (the analysis says so; tested below)
    result = run_in_process(KaplanMeier("km", group="arm", levels=ARMS), tables_of(frames), OFF)
    assert_equals_lifelines(result, "overall", rows)
    present = [a for a in ARMS if (rows["arm"] == a).any()]
    for arm in present:
        assert_equals_lifelines(result, arm, rows[rows["arm"] == arm])
    if len(present) == len(ARMS):
        reference = multivariate_logrank_test(rows["T"], rows["arm"], rows["E"])
        assert result.tables["logrank"]["statistic"] == pytest.approx(
            reference.test_statistic, rel=1e-9, abs=1e-12
        )


def test_a_grid_curve_is_the_pooled_curve_of_times_rounded_up_to_the_grid() -> None:
    frames = survival_sites([50, 60, 40], seed=5)
    grid = [0.0, 90.0, 180.0, 365.0, 730.0, 1095.0]
    result = run_in_process(KaplanMeier("km", mode="grid", grid=grid), tables_of(frames), OFF)
    rows = pooled(frames)
    index = np.searchsorted(grid, rows["T"], "left")
    beyond = index >= len(grid)
    binned = pd.DataFrame(
        {
            "T": np.asarray(grid)[np.minimum(index, len(grid) - 1)],
            "E": np.where(beyond, 0.0, rows["E"]),
        }
    )
    assert_equals_lifelines(result, "overall", binned)
    assert any("censored there" in note for note in result.notes)
    assert any("binned up to the grid" in note for note in result.notes)


def released_counts(question: Question, frames: dict[str, pd.DataFrame], rules: DisclosureRules):
    for site, table in tables_of(frames).items():
        release = answer(question, table, rules)
        at_risk, events = release.values["at_risk"], release.values["events"]
        censored = (
            at_risk - np.concatenate([at_risk[:, 1:], np.zeros((len(at_risk), 1))], axis=1) - events
        )
        yield site, release, {"at risk": at_risk, "events": events, "censored": censored}


def test_with_min_cell_no_released_or_derived_count_is_below_it_and_events_only_move_later() -> (
    None
):
    frames = survival_sites([60, 23, 90, 7], seed=11)
    grid = [float(t) for t in range(0, 1500, 30)]
    analysis = KaplanMeier("km", mode="grid", grid=grid, group="arm", levels=ARMS)
    rules = DisclosureRules(min_cell=5)
    question = analysis.start().question
    for site, release, counts in released_counts(question, frames, rules):
        for name, values in counts.items():
            small = values[(values > 0) & (values < 5)]
            assert small.size == 0, f"{site} released {name} counts {small}"
        # Events only ever move to a later grid time: the released cumulative events never
        # run ahead of the true (unmerged) cumulative events.
        honest = answer(question, tables_of({site: frames[site]})[site], OFF)
        assert np.all(
            np.cumsum(release.values["events"], axis=1)
            <= np.cumsum(honest.values["events"], axis=1) + 1e-9
        )
    tiny = [line for _, r, _ in released_counts(question, frames, rules) for line in r.suppressed]
    assert any("withheld" in line for line in tiny)  # site-3 has 7 rows split over 3 arms
    result = run_in_process(analysis, tables_of(frames), rules)
    assert any(note.startswith("site-3: ") and "withheld" in note for note in result.notes)


def test_exact_mode_needs_min_cell_off_and_a_stricter_site_sits_out_visibly() -> None:
    frames = survival_sites([40, 35, 50], seed=2, tie_days=10.0)
    rules = {"site-0": OFF, "site-1": DisclosureRules(min_cell=5), "site-2": OFF}
    result = run_in_process(KaplanMeier("km"), tables_of(frames), rules)
    assert_equals_lifelines(result, "overall", pooled({s: frames[s] for s in ("site-0", "site-2")}))
    assert any(n.startswith("site-1: exact event times withheld: min_cell 5") for n in result.notes)
    with pytest.raises(ValueError, match="no site released an event time"):
        run_in_process(KaplanMeier("km"), tables_of(frames), DisclosureRules())


def test_at_risk_table_counts_patients_still_followed_at_each_time() -> None:
    frames = survival_sites([30, 40, 20], seed=4)
    times = [0.0, 100.0, 365.0, 1000.0]
    result = run_in_process(
        KaplanMeier("km", group="arm", levels=ARMS, at_risk_times=times), tables_of(frames), OFF
    )
    rows = pooled(frames)
    table = result.tables["at_risk_table"]
    assert table["times"] == times
    assert table["overall"] == [float((rows["T"] >= t).sum()) for t in times]
    assert table["drug"] == [
        float(((rows["T"] >= t) & (rows["arm"] == "drug")).sum()) for t in times
    ]
    median = KaplanMeierFitter().fit(rows["T"], rows["E"]).median_survival_time_
    assert result.tables["median"]["overall"] == pytest.approx(median)


def test_the_step_memo_is_json_so_a_query_resumes_between_steps() -> None:
    frames = survival_sites([30, 40, 20], seed=8)
    tables = tables_of(frames)
    analysis = KaplanMeier("km", group="arm", levels=ARMS)
    step = analysis.start()
    result = None
    while result is None:
        step = Step(step.question, json.loads(json.dumps(step.memo)))  # checkpoint + resume
        question = Question(**json.loads(json.dumps(step.question.__dict__)))
        assert analysis.permits(question)
        out = analysis.advance(
            step, combine(question, {s: answer(question, t, OFF) for s, t in tables.items()})
        )
        result = out if isinstance(out, AnalysisResult) else None
        step = out if isinstance(out, Step) else step
    assert json.loads(json.dumps(result.tables)) == result.tables
    assert result.tables == run_in_process(analysis, tables, OFF).tables


def test_permits_only_its_own_questions() -> None:
    analysis = KaplanMeier("km", group="arm", levels=ARMS)
    counts = KaplanMeier("km", group="arm", levels=ARMS)._counts([1.0, 2.0])
    assert analysis.permits(analysis.start().question)
    assert analysis.permits(counts)
    assert not analysis.permits(
        Question("km", counts.step, {**counts.params, "group": "sex"}, "sum")
    )
    assert not analysis.permits(Question("other", counts.step, counts.params, "sum"))
    assert not analysis.permits(Question("km", "cox.moments", {}, "sum"))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (
            "E",
            2.0,
            r"site-0 \(site-0.csv\), row 3 \(line 4\), column 'E': expected an event indicator 0 or 1, found 2.0",
        ),
        (
            "T",
            -1.0,
            r"site-0 \(site-0.csv\), row 3 \(line 4\), column 'T': expected a time >= 0, found -1.0",
        ),
        (
            "T",
            "soon",
            r"row 3 \(line 4\), column 'T': expected a number for the time, found 'soon'",
        ),
        (
            "arm",
            "placebo",
            r"row 3 \(line 4\), column 'arm': the value 'placebo' is not one of the plan's levels",
        ),
    ],
)
def test_bad_rows_are_refused_naming_site_file_row_and_column(
    column: str, value: object, message: str
) -> None:
    frames = survival_sites([10, 10, 10], seed=1)
    frame = frames["site-0"].astype({column: object})
    frame.loc[2, column] = value
    frames["site-0"] = frame
    with pytest.raises(ValueError, match=message):
        run_in_process(KaplanMeier("km", group="arm", levels=ARMS), tables_of(frames), OFF)


def test_a_table_without_survival_roles_is_refused() -> None:
    frame = survival_sites([10], seed=1)["site-0"]
    with pytest.raises(ValueError, match="declares no time/event roles"):
        run_in_process(KaplanMeier("km"), {"a": SiteTable("a", frame)}, OFF)


def test_exact_curves_with_delayed_entry_equal_lifelines_with_entry() -> None:
    frames = survival_sites([60, 45, 70], seed=51, tie_days=7.0)
    tables = with_delayed_entry(frames, seed=51)
    result = run_in_process(KaplanMeier("km", group="arm", levels=ARMS), tables, OFF)
    rows = pooled(frames)
    for name, part in [("overall", rows), ("drug", rows[rows["arm"] == "drug"])]:
        reference = KaplanMeierFitter().fit(part["T"], part["E"], entry=part["entry"])
        timeline = reference.survival_function_.index.to_numpy()
        survival, lower, upper = curves(result)[name].at(timeline)
        np.testing.assert_allclose(
            survival, reference.survival_function_.to_numpy()[:, 0], atol=1e-12
        )
        np.testing.assert_allclose(
            upper, reference.confidence_interval_.to_numpy()[:, 1], atol=1e-12
        )
        np.testing.assert_allclose(
            lower, reference.confidence_interval_.to_numpy()[:, 0], atol=1e-12
        )
    times = result.tables["at_risk_table"]["times"]
    expected = [float(((rows["entry"] < t) & (rows["T"] >= t)).sum()) for t in times]
    assert result.tables["at_risk_table"]["overall"] == expected


def test_delayed_entry_is_refused_where_it_is_not_adjusted_for_and_checked_where_it_is() -> None:
    frames = survival_sites([20, 20, 20], seed=52)
    tables = with_delayed_entry(frames, seed=52)
    with pytest.raises(
        ValueError, match=r"declares an entry time 'entry'.*a time grid and the C-index do not"
    ):
        run_in_process(KaplanMeier("km", mode="grid", grid=[100.0, 1000.0]), tables, OFF)
    frames["site-1"].loc[4, "entry"] = frames["site-1"].loc[4, "T"] + 1
    with pytest.raises(
        ValueError,
        match=r"site-1 \(site-1.csv\), row 5 \(line 6\), column 'entry': expected an entry time >= 0 and <= the time",
    ):
        run_in_process(KaplanMeier("km"), tables, OFF)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "grid"}, "grid mode needs 'grid'"),
        ({"mode": "grid", "grid": [0.0, 5.0, 3.0]}, "increasing times"),
        ({"grid": [1.0]}, "'grid' is given but the mode is 'exact'"),
        ({"group": "arm"}, "needs both 'group' and its 'levels'"),
        ({"mode": "weekly"}, "mode must be 'exact' or 'grid'"),
        ({"at_risk_times": [0.0, 365.0, 100.0]}, "at_risk_times must be increasing times >= 0"),
    ],
)
def test_impossible_plans_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KaplanMeier("km", **kwargs)  # type: ignore[arg-type]


def test_tcga_brca_six_regions_curve_and_logrank_by_stage_equal_lifelines() -> None:
    from fedcare.stats.site_tables import tcga_brca_site_tables

    tables = tcga_brca_site_tables()
    rows = pd.concat([t.frame for t in tables.values()], ignore_index=True)
    stage = "ajcc_pathologic_stage_Stage IIA"
    result = run_in_process(KaplanMeier("km", group=stage, levels=["0.0", "1.0"]), tables, OFF)
    assert_equals_lifelines(result, "overall", rows)
    assert_equals_lifelines(result, "1.0", rows[rows[stage] == 1])
    reference = multivariate_logrank_test(rows["T"], rows[stage], rows["E"])
    assert result.tables["logrank"]["statistic"] == pytest.approx(
        reference.test_statistic, rel=1e-9
    )


@pytest.mark.parametrize("mode", ["exact", "grid"])
def test_one_patient_changes_each_released_array_by_at_most_its_declared_sensitivity(
    mode: str,
) -> None:
    frame = survival_sites([40], seed=31, tie_days=30.0)["site-0"]
    grid = [float(t) for t in range(0, 3000, 60)] if mode == "grid" else []
    analysis = KaplanMeier("km", mode=mode, grid=grid, group="arm", levels=ARMS)  # type: ignore[arg-type]
    times = sorted(frame.loc[frame["E"] == 1, "T"].unique()) if mode == "exact" else grid
    question = analysis._counts(times)
    full = answer(question, SiteTable("a", frame, "T", "E"), OFF)
    assert set(full.sensitivity) == set(full.values)
    for row in range(0, 40, 7):
        without = answer(question, SiteTable("a", frame.drop(index=row), "T", "E"), OFF)
        for key, (l1, l2) in full.sensitivity.items():
            change = full.values[key] - without.values[key]
            assert np.abs(change).sum() <= l1
            assert np.sqrt((change**2).sum()) <= l2 + 1e-12


@settings(max_examples=40)
@given(
    bins=st.lists(st.integers(0, 19), min_size=1, max_size=80),
    seed=st.integers(0, 10_000),
    min_cell=st.integers(2, 8),
)
def test_property_merging_small_cells_keeps_totals_moves_only_later_and_leaves_no_small_count(
    bins: list[int], seed: int, min_cell: int
) -> None:
    rows = np.asarray(bins, dtype=np.int64)
    event = np.random.default_rng(seed).integers(0, 2, len(rows)).astype(float)
    merged, ok = merge_small_cells(rows, event, 20, min_cell)
    if not ok:  # only when a whole total is itself a small count
        assert 0 < event.sum() < min_cell or 0 < (1 - event).sum() < min_cell
        return
    assert np.all(merged >= rows)
    for weights in (event, 1 - event):
        counts = np.bincount(merged, weights=weights, minlength=20)
        assert counts.sum() == weights.sum()
        assert not np.any((counts > 0) & (counts < min_cell))


def test_an_infinite_covariate_is_refused_naming_its_row() -> None:
    from fedcare.stats.survival_rows import survival_rows

    frame = survival_sites([10], seed=1)["site-0"]
    frame.loc[4, "marker"] = np.inf
    with pytest.raises(
        ValueError, match=r"row 5 \(line 6\), column 'marker': expected a finite number"
    ):
        survival_rows(SiteTable("a", frame, "T", "E", source="a.csv"), ["age", "marker"])


def test_a_declared_level_nobody_has_gets_no_curve_and_no_share_of_the_logrank() -> None:
    frames = survival_sites([40, 50, 30], seed=41)
    rows = pooled(frames)
    levels = [*ARMS, "radiotherapy"]
    result = run_in_process(KaplanMeier("km", group="arm", levels=levels), tables_of(frames), OFF)
    assert set(result.tables["curves"]) == {"overall", *ARMS}
    assert "arm=radiotherapy: no released rows, so no curve" in result.notes
    reference = multivariate_logrank_test(rows["T"], rows["arm"], rows["E"])
    assert result.tables["logrank"]["df"] == 2
    assert result.tables["logrank"]["statistic"] == pytest.approx(
        reference.test_statistic, rel=1e-9
    )


def test_rows_without_a_group_count_in_the_overall_curve_only() -> None:
    frames = survival_sites([40, 30, 30], seed=43)
    frames["site-2"].loc[[0, 5, 9], "arm"] = None
    rows = pooled(frames)
    result = run_in_process(KaplanMeier("km", group="arm", levels=ARMS), tables_of(frames), OFF)
    assert_equals_lifelines(result, "overall", rows)
    assert_equals_lifelines(result, "drug", rows[rows["arm"] == "drug"])
    expected = "site-2: curves by arm: 3 of 30 rows left out: missing arm (complete cases)"
    assert expected in result.notes
