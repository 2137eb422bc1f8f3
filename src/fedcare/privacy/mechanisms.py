"""Gaussian mechanisms on flat float32 update vectors (numpy only).

Client-level DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent
language models") in three trust models:

* central: sites clip, the coordinator sums, adds N(0, (zC)^2) once and divides by the
  fixed, public expected number of sites (not the number received, which would leak);
* local: each site clips and adds the full N(0, (zC)^2) itself, trusting nobody;
* distributed: each of n sites adds N(0, (zC)^2 / n), so the *sum* carries the full noise;
  made for secure aggregation, where the coordinator only ever sees the sum.

Every mechanism object holds a :class:`PrivacyAccountant` and records each noised release
itself (Opacus's step hook), so no release can go uncounted.

Noise is drawn from a numpy Generator: pass one from the run's seed stream for
reproducible simulation; the default is seeded from the OS CSPRNG.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, UpdateRejectedError
from fedcare.core.vectors import FloatVector
from fedcare.privacy.accountant import PrivacyAccountant
from fedcare.privacy.adaptive_clip import AdaptiveClipNorm

# Clipping lives in transforms (one clip for every stage); re-exported for DP users.
from fedcare.transforms.clipping import ClipResult as ClipResult
from fedcare.transforms.clipping import check_clip_norm as check_clip_norm
from fedcare.transforms.clipping import check_update as check_update
from fedcare.transforms.clipping import l2_clip as l2_clip


def secure_rng() -> np.random.Generator:
    """A numpy Generator seeded with 128 bits from the operating system's CSPRNG."""
    return np.random.default_rng(secrets.randbits(128))


def gaussian_noise(size: int, std: float, rng: np.random.Generator) -> FloatVector:
    """``size`` independent N(0, std^2) values as float32."""
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise standard deviation must be finite and >= 0, found {std}")
    return (rng.standard_normal(size, dtype=np.float32) * np.float32(std)).astype(np.float32)


def _check_z(noise_multiplier: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise multiplier must be finite and >= 0, found {noise_multiplier}")


def _check_sites(expected_sites: float, sampling_rate: float) -> None:
    if not (expected_sites > 0 and math.isfinite(expected_sites)):
        raise ConfigError(f"expected number of sites must be > 0, found {expected_sites}")
    if not (0 < sampling_rate <= 1):
        raise ConfigError(f"site sampling rate must be in (0, 1], found {sampling_rate}")


class _Cohort(TypedDict):
    noise_multiplier: float
    expected_sites: float
    sampling_rate: float
    accountant: PrivacyAccountant


class _CohortRelease:
    """What the coordinator's client-level mechanisms share: noise multiplier z, the
    expected number of sites a mean divides by, the site sampling rate, the accountant."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        expected_sites: float,
        sampling_rate: float,
        accountant: PrivacyAccountant,
    ) -> None:
        _check_z(noise_multiplier)
        _check_sites(expected_sites, sampling_rate)
        self.noise_multiplier = noise_multiplier
        self.expected_sites = float(expected_sites)
        self.sampling_rate = sampling_rate
        self.accountant = accountant


class CentralDPFedAvg(_CohortRelease):
    """DP-FedAvg with central noise: clip each site's update, sum, noise once, average.

    ``clip`` is a fixed norm C or an :class:`AdaptiveClipNorm` (Andrew et al. 2021); with
    adaptive clipping the update noise uses z_delta and the clipped-count query uses the
    rest of the budget, so one release still costs exactly noise multiplier z.
    """

    def __init__(
        self,
        *,
        clip: float | AdaptiveClipNorm,
        rng: np.random.Generator | None = None,
        **cohort: Unpack[_Cohort],
    ) -> None:
        super().__init__(**cohort)
        self.adaptive = clip if isinstance(clip, AdaptiveClipNorm) else None
        if not isinstance(clip, AdaptiveClipNorm):
            check_clip_norm(clip)
        self._clip = clip
        self.update_noise_multiplier = (
            self.adaptive.update_noise_multiplier(self.noise_multiplier)
            if self.adaptive is not None
            else self.noise_multiplier
        )
        self.rng = rng if rng is not None else secure_rng()

    @property
    def clip_norm(self) -> float:
        """The clip norm C for the current round (sites clip to it before upload)."""
        clip = self._clip
        return clip.clip_norm if isinstance(clip, AdaptiveClipNorm) else float(clip)

    def clip(self, update: npt.ArrayLike) -> ClipResult:
        return l2_clip(update, self.clip_norm)

    def release(
        self, clipped_sum: npt.ArrayLike, participants: int, unclipped_count: int = 0
    ) -> FloatVector:
        """Noise the sum of ``participants`` clipped updates, record the release, return
        the DP mean.

        ``unclipped_count`` (sites whose update was not clipped) feeds adaptive clipping;
        the clip norm for the next round is updated from its noised value.
        """
        total = check_update(clipped_sum, what="sum of clipped updates")
        std = self.update_noise_multiplier * self.clip_norm
        noised = total + gaussian_noise(total.size, std, self.rng)
        self.accountant.record(self.noise_multiplier, self.sampling_rate)
        if self.adaptive is not None:
            self.adaptive.update(unclipped_count, participants, self.expected_sites, self.rng)
        return (noised / np.float32(self.expected_sites)).astype(np.float32)

    def aggregate(self, updates: Sequence[npt.ArrayLike]) -> FloatVector:
        """Clip every update, sum, and :meth:`release` the noised mean."""
        if not updates:
            raise UpdateRejectedError("DP-FedAvg needs at least one update to aggregate")
        results = [self.clip(u) for u in updates]
        total = np.sum([r.vector for r in results], axis=0, dtype=np.float32)
        return self.release(total, len(results), sum(not r.clipped for r in results))


class _SiteNoise:
    """What a site's own noise mechanisms share: clip norm C, noise multiplier z, the RNG
    (the OS CSPRNG unless one is given)."""

    def __init__(
        self, *, clip_norm: float, noise_multiplier: float, rng: np.random.Generator | None
    ) -> None:
        check_clip_norm(clip_norm)
        _check_z(noise_multiplier)
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.rng = rng if rng is not None else secure_rng()


class LocalDPGaussian(_SiteNoise):
    """Local DP at one site: clip to C and add N(0, (zC)^2) before anything leaves the site.

    The site's own accountant records one release per upload (sampling rate 1: the
    coordinator sees each upload, so there is no amplification by sampling).
    """

    def __init__(
        self,
        *,
        clip_norm: float,
        noise_multiplier: float,
        accountant: PrivacyAccountant,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng)
        self.accountant = accountant

    def privatise(self, update: npt.ArrayLike) -> FloatVector:
        clipped = l2_clip(update, self.clip_norm).vector
        noise = gaussian_noise(clipped.size, self.noise_multiplier * self.clip_norm, self.rng)
        self.accountant.record(self.noise_multiplier, 1.0)
        return (clipped + noise).astype(np.float32)


def mean_over_expected(total: npt.ArrayLike, expected_sites: float) -> FloatVector:
    """Sum of (already noised) site updates divided by the fixed expected number of sites."""
    _check_sites(expected_sites, 1.0)
    vec = check_update(total, what="sum of updates")
    return (vec / np.float32(expected_sites)).astype(np.float32)


class DistributedNoiseShare(_SiteNoise):
    """Site half of distributed DP: clip to C and add N(0, (zC)^2 / n), n = cohort size.

    The n shares sum to N(0, (zC)^2). If ``accountant`` is given, it records what this
    site's share alone guarantees (noise multiplier z / sqrt(n)): the site's own worst
    case if secure aggregation were bypassed.
    """

    def __init__(
        self,
        *,
        clip_norm: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
        accountant: PrivacyAccountant | None = None,
    ) -> None:
        super().__init__(clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng)
        self.accountant = accountant

    def privatise(self, update: npt.ArrayLike, cohort_size: int) -> FloatVector:
        if cohort_size < 1:
            raise ConfigError(f"cohort size must be >= 1, found {cohort_size}")
        clipped = l2_clip(update, self.clip_norm).vector
        std = self.noise_multiplier * self.clip_norm / math.sqrt(cohort_size)
        noise = gaussian_noise(clipped.size, std, self.rng)
        if self.accountant is not None:
            self.accountant.record(self.noise_multiplier / math.sqrt(cohort_size), 1.0)
        return (clipped + noise).astype(np.float32)


class DistributedDPFedAvg(_CohortRelease):
    """Coordinator half of distributed DP: receives only the (securely aggregated) sum.

    If sites drop out, fewer noise shares reach the sum; the release is recorded with the
    noise it really carries, z * sqrt(received / cohort).
    """

    def effective_noise_multiplier(self, cohort_size: int, received: int) -> float:
        if not (1 <= received <= cohort_size):
            raise ConfigError(
                f"received shares must be between 1 and the cohort size {cohort_size}, "
                f"found {received}"
            )
        return self.noise_multiplier * math.sqrt(received / cohort_size)

    def release(self, noised_sum: npt.ArrayLike, cohort_size: int, received: int) -> FloatVector:
        z_eff = self.effective_noise_multiplier(cohort_size, received)
        mean = mean_over_expected(noised_sum, self.expected_sites)
        self.accountant.record(z_eff, self.sampling_rate)
        return mean
