"""Harrell's C-index as additive counts, exact against lifelines' concordance_index."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines.utils import concordance_index

from fedcare.core.metrics import EvalStats, concordance_counts, eval_counts, eval_from_counts


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 40))
def test_c_index_equals_lifelines_with_tied_times_and_scores(data: st.DataObject, n: int) -> None:
    times = data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    events = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    risk = data.draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n))
    counts = concordance_counts(risk, times, events)
    if counts.comparable == 0:
        assert math.isnan(counts.c_index)
        return
    # lifelines scores predicted survival: higher risk means a shorter predicted time.
    expected = concordance_index(times, -np.asarray(risk, dtype=float), events)
    assert counts.c_index == pytest.approx(expected, abs=1e-12)


def test_chunking_does_not_change_the_counts() -> None:
    rng = np.random.default_rng(0)
    time, event, risk = rng.integers(1, 50, 500), rng.integers(0, 2, 500), rng.normal(size=500)
    assert concordance_counts(risk, time, event, chunk=7) == concordance_counts(risk, time, event)


def test_site_counts_add_up_to_the_c_index_over_same_site_pairs() -> None:
    """Two sites' summed counts compare rows within each site, never across sites."""
    north = EvalStats.from_survival(
        np.array([2.0, 1.0, 0.0]), np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), 1.5, 2
    )
    south = EvalStats.from_survival(
        np.array([0.0, 1.0]), np.array([1.0, 5.0]), np.array([1, 0]), 0.5, 2
    )
    assert north.c_index == 1.0  # 3 pairs, all ordered right
    assert south.c_index == 0.0  # 1 pair, ordered wrong
    total = north + south
    assert total.c_index == pytest.approx(3 / 4)
    assert total.summary() == {"c_index": 0.75, "loss": 2.0 / 5, "count": 5.0}


def test_survival_and_classification_counts_do_not_mix() -> None:
    survival = EvalStats.from_survival(np.zeros(2), np.ones(2), np.ones(2), 0.0, 2)
    with pytest.raises(ValueError, match="survival and of a classification"):
        _ = survival + EvalStats.empty(2)


def test_survival_counts_survive_their_json_form() -> None:
    stats = EvalStats.from_survival(
        np.array([0.2, 0.1, 0.4]), np.array([3.0, 1.0, 2.0]), np.array([1, 1, 0]), 2.5, 2
    )
    back = eval_from_counts(json.loads(json.dumps(eval_counts(stats))))
    assert back.concordance == stats.concordance
    assert back.summary() == stats.summary()
    assert "concordance" not in eval_counts(EvalStats.empty(2))  # classification unchanged
