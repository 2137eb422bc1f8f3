"""Update validation: layout, dtype, finite values, extras, weight and the optional norm bound."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.core.errors import UpdateRejectedError
from fedcare.core.vectors import ParamLayout, TensorSpec
from fedcare.runtime.messages import UpdateMessage
from fedcare.runtime.validation import validate_update

LAYOUT = ParamLayout((TensorSpec("w", (3, 2)), TensorSpec("b", (2,))))
CONTROL = "scaffold/control_delta"


def update(delta, extras=None, weight=10.0):
    return UpdateMessage("run-1", 2, 0, delta, extras or {}, weight, 10, sender="site-a")


def good(seed=0):
    return np.random.default_rng(seed).normal(size=LAYOUT.size).astype(np.float32)


def test_a_well_formed_update_passes_and_reports_its_norm():
    delta = good()
    norm = validate_update(update(delta), LAYOUT)
    assert norm == pytest.approx(float(np.linalg.norm(delta.astype(np.float64))))


@pytest.mark.parametrize(
    ("delta", "problem"),
    [
        (np.zeros(5, dtype=np.float32), r"shape \(5,\), expected \(8,\)"),
        (np.zeros(8, dtype=np.float64), "dtype float64, expected float32"),
        (np.zeros((2, 4), dtype=np.float32), r"shape \(2, 4\)"),
    ],
)
def test_an_update_that_does_not_fit_the_model_is_rejected(delta, problem):
    with pytest.raises(UpdateRejectedError, match=problem):
        validate_update(update(delta), LAYOUT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_naming_the_site_and_the_index(bad):
    delta = good()
    delta[5] = bad
    with pytest.raises(UpdateRejectedError, match=r"site 'site-a' for round 2: delta.*index 5"):
        validate_update(update(delta), LAYOUT)


def test_extras_must_be_exactly_what_the_strategy_uploads():
    expected = {CONTROL: LAYOUT.size}
    validate_update(update(good(), {CONTROL: good(1)}), LAYOUT, extras=expected)
    with pytest.raises(UpdateRejectedError, match="do not match what the strategy uploads"):
        validate_update(update(good()), LAYOUT, extras=expected)
    with pytest.raises(UpdateRejectedError, match="do not match"):
        validate_update(update(good(), {"smuggled": good(1)}), LAYOUT)
    broken = good(1)
    broken[0] = np.nan
    with pytest.raises(UpdateRejectedError, match=CONTROL):
        validate_update(update(good(), {CONTROL: broken}), LAYOUT, extras=expected)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_the_weight_must_be_positive_and_finite(weight):
    with pytest.raises(UpdateRejectedError, match="aggregation weight"):
        validate_update(update(good(), weight=weight), LAYOUT)


def test_the_norm_bound_is_enforced_only_when_set():
    delta = np.full(LAYOUT.size, 10.0, dtype=np.float32)
    validate_update(update(delta), LAYOUT)
    with pytest.raises(UpdateRejectedError, match="exceeds the study's bound 1"):
        validate_update(update(delta), LAYOUT, max_norm=1.0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, LAYOUT.size, elements=st.floats(width=32)))
def test_an_update_is_accepted_exactly_when_every_value_is_finite(delta):
    finite = bool(np.isfinite(delta).all())
    try:
        validate_update(update(delta), LAYOUT.size)
        accepted = True
    except UpdateRejectedError:
        accepted = False
    assert accepted == finite
