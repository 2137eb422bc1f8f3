"""Adaptive clipping follows the target quantile of the update norms (Andrew et al. 2021)."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.privacy.adaptive_clip import (
    AdaptiveClipConfig,
    AdaptiveClipNorm,
    next_clip_norm,
    noised_unclipped_fraction,
    update_noise_multiplier,
)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_clip_norm_converges_to_the_target_quantile_of_lognormal_norms(quantile):
    rng = np.random.default_rng(0)
    sites = 100
    clip = AdaptiveClipNorm(
        AdaptiveClipConfig(
            initial_clip_norm=0.01,  # far below every norm: C must climb ~6 orders of e
            count_noise_std=sites / 20,
            target_quantile=quantile,
            learning_rate=0.2,
        )
    )
    late = []
    for round_index in range(400):
        norms = rng.lognormal(mean=1.0, sigma=0.5, size=sites)
        clip.update(int((norms <= clip.clip_norm).sum()), sites, sites, rng)
        if round_index >= 300:
            late.append(clip.clip_norm)
    true_quantile = math.exp(1.0 + 0.5 * NormalDist().inv_cdf(quantile))
    assert np.median(late) == pytest.approx(true_quantile, rel=0.1)


def test_geometric_update_moves_towards_the_quantile():
    assert next_clip_norm(1.0, 1.0, 0.5, 0.2) == pytest.approx(math.exp(-0.1))  # all unclipped
    assert next_clip_norm(1.0, 0.0, 0.5, 0.2) == pytest.approx(math.exp(0.1))  # all clipped
    assert next_clip_norm(2.0, 0.5, 0.5, 0.2) == 2.0


@settings(max_examples=50, deadline=None)
@given(z=st.floats(0.1, 20.0), sigma_b=st.floats(0.1, 100.0))
def test_update_and_count_noise_compose_to_exactly_the_budgeted_noise(z, sigma_b):
    if 2 * sigma_b <= z * (1 + 1e-9):
        with pytest.raises(ConfigError, match="sigma_b"):
            update_noise_multiplier(z, sigma_b)
        return
    z_delta = update_noise_multiplier(z, sigma_b)
    assert z_delta > z
    # Two Gaussian releases compose like one with 1/z^2 = 1/z_delta^2 + 1/(2 sigma_b)^2.
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-9)


def test_noised_fraction_is_centred_and_normalised_by_the_expected_sites():
    rng = np.random.default_rng(0)
    draws = [noised_unclipped_fraction(30, 40, 50.0, 2.0, rng) for _ in range(20_000)]
    # (30 - 40/2 + 50/2) / 50 on average, with std 2/50.
    assert np.mean(draws) == pytest.approx(35 / 50, abs=2e-3)
    assert np.std(draws) == pytest.approx(2 / 50, rel=0.05)
    with pytest.raises(ConfigError, match="unclipped count"):
        noised_unclipped_fraction(41, 40, 50.0, 2.0, rng)


def test_state_round_trips_and_bad_configs_are_refused():
    clip = AdaptiveClipNorm(AdaptiveClipConfig(initial_clip_norm=0.5, count_noise_std=1.0))
    clip.update(3, 10, 10.0, np.random.default_rng(0))
    again = AdaptiveClipNorm.from_dict(clip.to_dict())
    assert again.clip_norm == clip.clip_norm and again.config == clip.config
    with pytest.raises(ConfigError, match="target_quantile"):
        AdaptiveClipConfig(initial_clip_norm=1.0, count_noise_std=1.0, target_quantile=1.0)
    with pytest.raises(ConfigError, match="malformed"):
        AdaptiveClipNorm.from_dict({"config": {"initial_clip_norm": 1.0}, "clip_norm": 1.0})
