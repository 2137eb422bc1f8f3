"""Harrell's C per site and pooled across sites equals lifelines' concordance_index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines.utils import concordance_index

from fedcare.stats.concordance import Concordance, pair_counts
from fedcare.stats.protocol import DisclosureRules, Question, run_in_process
from tests.stats.survival_data import pooled, survival_sites, tables_of

OFF = DisclosureRules(min_cell=1)
COVARIATES = ["age", "sex", "marker"]
COEF = [0.03, -0.3, 0.4]


def harrell(rows: pd.DataFrame) -> float:
    """lifelines' C of the linear risk (it ranks predicted survival, so minus the risk)."""
    risk = rows[COVARIATES].to_numpy() @ np.asarray(COEF)
    return float(concordance_index(rows["T"], -risk, rows["E"]))


@pytest.mark.parametrize("tie_days", [0.0, 30.0, 365.0])
def test_per_site_and_pooled_c_index_equal_lifelines(tie_days: float) -> None:
    frames = survival_sites([60, 45, 80, 30], seed=21, tie_days=tie_days)
    result = run_in_process(Concordance("c", COVARIATES, COEF), tables_of(frames), OFF)
    for site, frame in frames.items():
        assert result.tables["per_site"][site]["c_index"] == pytest.approx(
            harrell(frame), abs=1e-12
        )
    assert result.tables["pooled"]["c_index"] == pytest.approx(harrell(pooled(frames)), abs=1e-12)
    mean = np.mean([harrell(f) for f in frames.values()])
    assert result.tables["mean_of_sites"] == pytest.approx(mean, abs=1e-12)


def test_a_risk_column_with_tied_scores_counts_ties_as_half() -> None:
    frames = survival_sites([40, 50, 30], seed=22, tie_days=60.0)
    for frame in frames.values():
        frame["score"] = np.round(frame["marker"])  # a coarse score: many ties
    result = run_in_process(Concordance("c", risk="score"), tables_of(frames), OFF)
    rows = pooled(frames)
    expected = concordance_index(rows["T"], -rows["score"], rows["E"])
    assert result.tables["pooled"]["c_index"] == pytest.approx(expected, abs=1e-12)
    assert result.tables["pooled"]["tied"] > 0


@settings(max_examples=20)
@given(
    n=st.integers(2, 40),
    seed=st.integers(0, 10_000),
    time_values=st.integers(1, 10),
    risk_values=st.integers(1, 10),
)
def test_property_pair_counts_equal_lifelines(
    n: int, seed: int, time_values: int, risk_values: int
) -> None:
    rng = np.random.default_rng(seed)
    time = rng.integers(0, time_values, n).astype(float)
    event = rng.integers(0, 2, n).astype(float)
    risk = rng.integers(0, risk_values, n).astype(float)
    died = event == 1
    concordant, tied, comparable = pair_counts(time[died], risk[died], time, event, risk)
    if comparable == 0:
        return
    assert (concordant + tied / 2) / comparable == pytest.approx(
        concordance_index(time, -risk, event), abs=1e-12
    )


def test_a_site_that_may_not_release_event_risks_leaves_the_pooled_c_consistently() -> None:
    frames = survival_sites([50, 40, 60], seed=23)
    rules = {"site-0": OFF, "site-1": DisclosureRules(min_cell=5), "site-2": OFF}
    result = run_in_process(Concordance("c", COVARIATES, COEF), tables_of(frames), rules)
    kept = pooled({s: frames[s] for s in ("site-0", "site-2")})
    assert result.tables["pooled"]["c_index"] == pytest.approx(harrell(kept), abs=1e-12)
    # Its own within-site C is three pair counts, which min_cell allows.
    assert result.tables["per_site"]["site-1"]["c_index"] == pytest.approx(
        harrell(frames["site-1"])
    )
    assert any(n.startswith("site-1: withheld from the pooled C-index") for n in result.notes)


def test_without_pooling_only_the_per_site_question_is_asked_and_permitted() -> None:
    frames = survival_sites([20, 20, 20], seed=24)
    analysis = Concordance("c", COVARIATES, COEF, pooled=False)
    result = run_in_process(analysis, tables_of(frames), OFF)
    assert "pooled" not in result.tables
    assert analysis.permits(analysis.start().question)
    assert not analysis.permits(Question("c", "cindex.event_risks", analysis._score(), "per_site"))
    assert not Concordance("c", COVARIATES, [0.0, 0.0, 1.0]).permits(analysis.start().question)


def test_a_score_must_be_given_one_way() -> None:
    with pytest.raises(ValueError, match="either 'covariates' with 'coef' or a 'risk' column"):
        Concordance("c")
    with pytest.raises(ValueError, match="3 covariates but 2 coefficients"):
        Concordance("c", COVARIATES, [1.0, 2.0])


def test_the_c_index_refuses_delayed_entry_it_does_not_adjust_for() -> None:
    from fedcare.stats.protocol import SiteTable

    frame = survival_sites([20], seed=25)["site-0"].assign(entry=0.0)
    with pytest.raises(ValueError, match="declares an entry time 'entry'"):
        run_in_process(
            Concordance("c", COVARIATES, COEF),
            {"a": SiteTable("a", frame, "T", "E", entry="entry")},
            OFF,
        )


def test_a_site_refuses_to_compare_with_events_that_leave_out_its_own() -> None:
    from fedcare.stats.protocol import answer

    frames = survival_sites([30, 30, 30], seed=26)
    analysis = Concordance("c", COVARIATES, COEF)
    probe = Question(
        "c",
        "cindex.pair_counts",
        {**analysis._score(), "event_times": [100.0], "event_risks": [2.5]},
        "sum",
    )
    assert analysis.permits(probe)  # the plan cannot tell a probe from real events...
    with pytest.raises(ValueError, match="do not include the events this site released"):
        answer(probe, tables_of(frames)["site-0"], OFF)  # ...but the site can
