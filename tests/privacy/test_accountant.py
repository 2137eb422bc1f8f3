"""The accountant composes Poisson-subsampled Gaussian releases exactly as dp-accounting does."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.privacy.accountant import (
    GaussianRelease,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_of,
)

noise = st.floats(min_value=0.5, max_value=5.0)
rate = st.floats(min_value=1e-3, max_value=1.0)


def direct_epsilon(library_accountant, releases, delta):
    for z, q, count in releases:
        gaussian = dp_accounting.GaussianDpEvent(z)
        event = gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        library_accountant.compose(event, count)
    return library_accountant.get_epsilon(delta)


@settings(max_examples=25, deadline=None)
@given(z=noise, q=rate, counts=st.lists(st.integers(1, 200), min_size=1, max_size=6))
def test_epsilon_never_decreases_as_steps_are_recorded(z, q, counts):
    acc = PrivacyAccountant(delta=1e-5)
    previous = 0.0
    for count in counts:
        acc.record(z, q, count)
        eps = acc.epsilon()
        assert eps >= previous
        previous = eps


@settings(max_examples=8, deadline=None)
@given(
    releases=st.lists(st.tuples(noise, rate, st.integers(1, 300)), min_size=1, max_size=3),
    delta=st.sampled_from([1e-6, 1e-5, 1e-3]),
)
def test_rdp_epsilon_matches_dp_accounting_called_directly(releases, delta):
    acc = PrivacyAccountant(delta=delta, kind="rdp")
    for z, q, count in releases:
        acc.record(z, q, count)
    expected = direct_epsilon(RdpAccountant(), releases, delta)
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)


@settings(max_examples=5, deadline=None)
@given(
    releases=st.lists(st.tuples(noise, rate, st.integers(1, 100)), min_size=1, max_size=2),
)
def test_pld_epsilon_matches_dp_accounting_called_directly(releases):
    acc = PrivacyAccountant(delta=1e-5, kind="pld", pld_discretization=1e-3)
    for z, q, count in releases:
        acc.record(z, q, count)
    expected = direct_epsilon(PLDAccountant(value_discretization_interval=1e-3), releases, 1e-5)
    # Grouping identical releases changes the order of PLD compositions only.
    assert acc.epsilon() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_pld_is_tighter_than_rdp_for_dp_sgd_like_training():
    releases = (GaussianRelease(1.1, 0.01, 1000),)
    rdp = epsilon_of(releases, 1e-5, "rdp")
    pld = epsilon_of(releases, 1e-5, "pld")
    assert pld < rdp
    assert rdp == pytest.approx(1.7118, abs=1e-3)  # the classic DP-SGD example value


def test_history_has_one_epsilon_per_closed_round_and_a_noiseless_step_is_infinite():
    acc = PrivacyAccountant(delta=1e-5)
    acc.record(1.0, 0.1, 5)
    acc.close_round(0)
    acc.record(1.0, 0.1, 5)
    acc.close_round(1)
    rounds, epsilons = zip(*acc.history, strict=True)
    assert rounds == (0, 1)
    assert epsilons[0] < epsilons[1]
    with pytest.raises(ConfigError, match="rounds must increase"):
        acc.close_round(1)
    acc.record(0.0, 0.1)
    assert math.isinf(acc.epsilon())


def test_epsilon_if_predicts_the_next_step_without_recording_it():
    acc = PrivacyAccountant(delta=1e-5)
    acc.record(1.2, 0.05, 10)
    predicted = acc.epsilon_if(1.2, 0.05, 3)
    assert acc.num_releases == 10
    acc.record(1.2, 0.05, 3)
    assert acc.epsilon() == pytest.approx(predicted)


def test_state_round_trips_through_json_and_keeps_counting():
    acc = PrivacyAccountant(delta=1e-6, kind="pld")
    acc.record(0.9, 0.02, 40)
    acc.record(1.5, 0.02, 10)
    acc.close_round(0)
    acc.record(0.0, 1.0)  # infinite epsilon must survive JSON too
    acc.close_round(1)
    restored = PrivacyAccountant.from_dict(json.loads(json.dumps(acc.to_dict(), allow_nan=False)))
    assert restored.releases == acc.releases
    assert restored.history == acc.history
    assert math.isinf(restored.epsilon())


def test_malformed_state_is_an_error_not_a_fresh_accountant():
    state = PrivacyAccountant(delta=1e-5).to_dict()
    state["releases"] = [[1.0, 0.1, "three"]]
    with pytest.raises(ConfigError, match="malformed"):
        PrivacyAccountant.from_dict(state)


@pytest.mark.parametrize(
    ("z", "q", "count", "match"),
    [(-1.0, 0.1, 1, "noise multiplier"), (1.0, 0.0, 1, "sampling rate"), (1.0, 0.5, 0, "count")],
)
def test_invalid_releases_are_refused(z, q, count, match):
    with pytest.raises(ConfigError, match=match):
        PrivacyAccountant(delta=1e-5).record(z, q, count)


@settings(max_examples=5, deadline=None)
@given(
    target=st.floats(min_value=0.3, max_value=8.0),
    steps=st.integers(10, 2000),
    q=st.floats(min_value=1e-3, max_value=0.2),
)
def test_calibration_hits_the_target_within_tolerance(target, steps, q):
    z = calibrate_noise_multiplier(target, 1e-5, steps, q, tolerance=0.01)
    eps = epsilon_of((GaussianRelease(z, q, steps),), 1e-5)
    assert target - 0.01 <= eps <= target


def test_calibration_with_pld_needs_less_noise_than_with_rdp():
    rdp = calibrate_noise_multiplier(2.0, 1e-5, 500, 0.02, accountant="rdp")
    pld = calibrate_noise_multiplier(2.0, 1e-5, 500, 0.02, accountant="pld")
    assert pld < rdp
    eps = epsilon_of((GaussianRelease(pld, 0.02, 500),), 1e-5, "pld")
    assert 1.99 <= eps <= 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 0.0}, "target epsilon"),
        ({"delta": 1.5}, "delta"),
        ({"steps": 0}, "count"),
        ({"target_epsilon": 1e-3, "tolerance": 1e-4}, "cannot reach epsilon"),
    ],
)
def test_impossible_calibration_targets_are_clear_errors(kwargs, match):
    args = {
        "target_epsilon": 1.0,
        "delta": 1e-5,
        "steps": 100,
        "sampling_rate": 0.5,
        "max_noise_multiplier": 50.0,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        calibrate_noise_multiplier(**args)
