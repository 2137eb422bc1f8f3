"""Gaussian mechanisms: clipping bounds, noise scales, and the accountant sees every release."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.core.errors import ConfigError, UpdateRejectedError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.accountant import PrivacyAccountant
from fedcare.privacy.adaptive_clip import AdaptiveClipConfig, AdaptiveClipNorm
from fedcare.privacy.mechanisms import (
    CentralDPFedAvg,
    DistributedDPFedAvg,
    DistributedNoiseShare,
    LocalDPGaussian,
    gaussian_noise,
    l2_clip,
    mean_over_expected,
    secure_rng,
)

vectors = arrays(
    np.float32,
    st.integers(1, 300),
    elements=st.floats(-1e4, 1e4, allow_nan=False, width=32),
)


@settings(max_examples=60, deadline=None)
@given(vec=vectors, clip=st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_the_clip_norm_and_direction_is_kept(vec, clip):
    result = l2_clip(vec, clip)
    assert result.vector.dtype == np.float32
    assert np.linalg.norm(result.vector.astype(np.float64)) <= clip
    assert result.clipped == (result.norm > clip)
    if not result.clipped:
        np.testing.assert_array_equal(result.vector, vec)
    elif result.norm > 0:
        cosine = (
            result.vector.astype(np.float64) @ vec / (np.linalg.norm(result.vector) * result.norm)
        )
        assert cosine == pytest.approx(1.0, abs=1e-5)


def test_clipping_refuses_bad_updates_and_clip_norms():
    with pytest.raises(UpdateRejectedError, match="float32"):
        l2_clip(np.ones(3), 1.0)
    with pytest.raises(UpdateRejectedError, match="NaN"):
        l2_clip(np.array([1.0, np.nan], dtype=np.float32), 1.0)
    with pytest.raises(ConfigError, match="clip norm"):
        l2_clip(np.ones(3, dtype=np.float32), 0.0)


def test_gaussian_noise_is_reproducible_from_the_seed_stream_and_has_the_requested_scale():
    seeds = SeedStream(7)
    a = gaussian_noise(200_000, 2.5, seeds.generator("noise", 3, 1))
    b = gaussian_noise(200_000, 2.5, seeds.generator("noise", 3, 1))
    np.testing.assert_array_equal(a, b)
    assert a.std() == pytest.approx(2.5, rel=0.01)
    assert abs(a.mean()) < 0.02
    # The default generator is seeded from the OS CSPRNG: two draws differ.
    assert not np.array_equal(
        gaussian_noise(8, 1.0, secure_rng()), gaussian_noise(8, 1.0, secure_rng())
    )


def test_central_dp_fedavg_clips_sums_noises_once_and_divides_by_the_expected_sites():
    acc = PrivacyAccountant(delta=1e-5)
    updates = [np.full(4, 3.0, dtype=np.float32), np.full(4, 0.1, dtype=np.float32)]
    mech = CentralDPFedAvg(
        noise_multiplier=0.0,  # noiseless to check the arithmetic exactly
        expected_sites=4,
        sampling_rate=0.4,
        accountant=acc,
        clip=1.0,
        rng=np.random.default_rng(0),
    )
    mean = mech.aggregate(updates)
    clipped_first = np.full(4, 0.5, dtype=np.float32)  # norm 6 -> 1
    np.testing.assert_allclose(mean, (clipped_first + updates[1]) / 4, rtol=1e-5)
    assert acc.releases[0].sampling_rate == 0.4
    assert acc.num_releases == 1


def test_central_noise_has_standard_deviation_z_times_c_over_expected_sites():
    acc = PrivacyAccountant(delta=1e-5)
    mech = CentralDPFedAvg(
        noise_multiplier=1.5,
        expected_sites=10,
        sampling_rate=0.1,
        accountant=acc,
        clip=2.0,
        rng=np.random.default_rng(1),
    )
    mean = mech.release(np.zeros(100_000, dtype=np.float32), participants=10)
    assert mean.std() == pytest.approx(1.5 * 2.0 / 10, rel=0.02)
    assert acc.num_releases == 1 and acc.epsilon() > 0


def test_local_dp_noises_each_update_fully_and_records_each_upload():
    acc = PrivacyAccountant(delta=1e-5)
    mech = LocalDPGaussian(
        clip_norm=1.0, noise_multiplier=0.8, accountant=acc, rng=np.random.default_rng(2)
    )
    out = mech.privatise(np.zeros(50_000, dtype=np.float32))
    assert out.std() == pytest.approx(0.8, rel=0.02)
    mech.privatise(np.zeros(3, dtype=np.float32))
    assert acc.num_releases == 2
    assert {r.sampling_rate for r in acc.releases} == {1.0}


def test_distributed_noise_shares_sum_to_the_central_noise_level():
    n, size, z, clip = 8, 40_000, 1.2, 0.5
    seeds = SeedStream(4)
    shares = [
        DistributedNoiseShare(
            clip_norm=clip, noise_multiplier=z, rng=seeds.generator("noise", 0, i)
        ).privatise(np.zeros(size, dtype=np.float32), cohort_size=n)
        for i in range(n)
    ]
    assert shares[0].std() == pytest.approx(z * clip / math.sqrt(n), rel=0.02)
    total = np.sum(shares, axis=0)
    assert total.std() == pytest.approx(z * clip, rel=0.02)
    acc = PrivacyAccountant(delta=1e-5)
    server = DistributedDPFedAvg(
        noise_multiplier=z, expected_sites=n, sampling_rate=0.5, accountant=acc
    )
    mean = server.release(total, cohort_size=n, received=n)
    np.testing.assert_allclose(mean, total / n, rtol=1e-6)
    assert acc.releases[0].noise_multiplier == pytest.approx(z)


def test_dropouts_in_distributed_dp_are_recorded_with_the_noise_actually_present():
    acc = PrivacyAccountant(delta=1e-5)
    server = DistributedDPFedAvg(
        noise_multiplier=2.0, expected_sites=9, sampling_rate=1.0, accountant=acc
    )
    server.release(np.zeros(3, dtype=np.float32), cohort_size=9, received=4)
    assert acc.releases[0].noise_multiplier == pytest.approx(2.0 * math.sqrt(4 / 9))
    full = PrivacyAccountant(delta=1e-5)
    full.record(2.0, 1.0)
    assert acc.epsilon() > full.epsilon()


def test_a_site_can_account_for_what_its_own_share_guarantees():
    acc = PrivacyAccountant(delta=1e-5)
    site = DistributedNoiseShare(clip_norm=1.0, noise_multiplier=2.0, accountant=acc)
    site.privatise(np.ones(3, dtype=np.float32), cohort_size=4)
    assert acc.releases[0].noise_multiplier == pytest.approx(1.0)


def test_central_mechanism_with_adaptive_clipping_spends_exactly_z_and_moves_the_clip_norm():
    acc = PrivacyAccountant(delta=1e-5)
    adaptive = AdaptiveClipNorm(AdaptiveClipConfig(initial_clip_norm=1.0, count_noise_std=1.0))
    mech = CentralDPFedAvg(
        noise_multiplier=1.0,
        expected_sites=20,
        sampling_rate=0.5,
        accountant=acc,
        clip=adaptive,
        rng=np.random.default_rng(3),
    )
    assert mech.update_noise_multiplier > 1.0  # part of the budget pays for the count
    big = [np.full(10, 5.0, dtype=np.float32)] * 20  # every update clipped: C must grow
    mech.aggregate(big)
    assert mech.clip_norm > 1.0
    assert acc.releases[0].noise_multiplier == 1.0


def test_mechanisms_refuse_bad_configuration():
    acc = PrivacyAccountant(delta=1e-5)
    with pytest.raises(ConfigError, match="expected number of sites"):
        CentralDPFedAvg(
            noise_multiplier=1.0, expected_sites=0, sampling_rate=0.1, accountant=acc, clip=1.0
        )
    with pytest.raises(ConfigError, match="noise multiplier"):
        LocalDPGaussian(clip_norm=1.0, noise_multiplier=-1.0, accountant=acc)
    with pytest.raises(ConfigError, match="received"):
        DistributedDPFedAvg(
            noise_multiplier=1.0, expected_sites=3, sampling_rate=1.0, accountant=acc
        ).release(np.zeros(2, dtype=np.float32), cohort_size=3, received=5)
    with pytest.raises(UpdateRejectedError, match="at least one"):
        CentralDPFedAvg(
            noise_multiplier=1.0, expected_sites=3, sampling_rate=0.1, accountant=acc, clip=1.0
        ).aggregate([])
    with pytest.raises(ConfigError, match="expected number of sites"):
        mean_over_expected(np.zeros(2, dtype=np.float32), 0)
