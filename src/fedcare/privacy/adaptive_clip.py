"""Adaptive clipping for client-level DP (Andrew et al. 2021, "Differentially private
learning with adaptive clipping").

Each round the clip norm C moves geometrically towards the ``target_quantile`` gamma of
the sites' update norms:

    C <- C * exp(-eta_C * (b_bar - gamma))

where b_bar is the fraction of sites whose update was *not* clipped, released with
Gaussian noise sigma_b. Sites contribute b_i - 1/2 (sensitivity 1/2 under adding or
removing a site), so the count query has noise multiplier 2 sigma_b, and the update itself
is noised with

    z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)

so that the two releases together cost exactly one Gaussian release with multiplier z.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class AdaptiveClipConfig:
    """gamma, eta_C and sigma_b of Andrew et al.; they suggest gamma = 0.5, eta_C = 0.2
    and sigma_b = expected sites / 20."""

    initial_clip_norm: float
    count_noise_std: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_clip_norm) and self.initial_clip_norm > 0):
            raise ConfigError(
                f"adaptive clipping: initial_clip_norm must be finite and > 0, found {self.initial_clip_norm}"
            )
        if not (math.isfinite(self.count_noise_std) and self.count_noise_std > 0):
            raise ConfigError(
                f"adaptive clipping: count_noise_std (sigma_b) must be finite and > 0, found {self.count_noise_std}"
            )
        if not (0.0 < self.target_quantile < 1.0):
            raise ConfigError(
                f"adaptive clipping: target_quantile must be in (0, 1), found {self.target_quantile}"
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(
                f"adaptive clipping: learning_rate must be finite and > 0, found {self.learning_rate}"
            )


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's share of the budget z."""
    if not (noise_multiplier > 0):
        raise ConfigError(
            f"adaptive clipping needs a noise multiplier > 0 (it spends part of it on the "
            f"clipped-count query), found {noise_multiplier}"
        )
    rest = noise_multiplier**-2 - (2.0 * count_noise_std) ** -2
    if rest <= 0:
        raise ConfigError(
            f"adaptive clipping: the count noise sigma_b = {count_noise_std} is too small for "
            f"noise multiplier z = {noise_multiplier}; it needs 2 * sigma_b > z "
            f"(found 2 * sigma_b = {2 * count_noise_std})"
        )
    return float(rest**-0.5)


def next_clip_norm(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """Geometric update C * exp(-eta_C (b_bar - gamma))."""
    return float(clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile)))


def noised_unclipped_fraction(
    unclipped_count: int,
    participants: int,
    expected_sites: float,
    count_noise_std: float,
    rng: np.random.Generator,
) -> float:
    """b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2) + m/2) / m, m the expected number of
    sites: the count is released centred (sensitivity 1/2) and normalised by the public
    m, never by the true number of participants."""
    if not (0 <= unclipped_count <= participants):
        raise ConfigError(
            f"unclipped count must be between 0 and the {participants} participants, "
            f"found {unclipped_count}"
        )
    if not (expected_sites > 0):
        raise ConfigError(f"expected number of sites must be > 0, found {expected_sites}")
    centred = unclipped_count - 0.5 * participants + float(rng.normal(0.0, count_noise_std))
    return (centred + 0.5 * expected_sites) / expected_sites


class AdaptiveClipNorm:
    """The current clip norm C and its update rule; state is one JSON-safe dict."""

    def __init__(self, config: AdaptiveClipConfig, clip_norm: float | None = None) -> None:
        self.config = config
        self.clip_norm = config.initial_clip_norm if clip_norm is None else float(clip_norm)
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"adaptive clip norm must be finite and > 0, found {self.clip_norm}")

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        return update_noise_multiplier(noise_multiplier, self.config.count_noise_std)

    def update(
        self,
        unclipped_count: int,
        participants: int,
        expected_sites: float,
        rng: np.random.Generator,
    ) -> float:
        """Move C after a round in which ``unclipped_count`` of ``participants`` sites were
        not clipped."""
        fraction = noised_unclipped_fraction(
            unclipped_count, participants, expected_sites, self.config.count_noise_std, rng
        )
        self.clip_norm = next_clip_norm(
            self.clip_norm, fraction, self.config.target_quantile, self.config.learning_rate
        )
        return self.clip_norm

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "clip_norm": self.clip_norm}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveClipNorm:
        try:
            return cls(AdaptiveClipConfig(**data["config"]), float(data["clip_norm"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"adaptive clipping state is malformed: {exc!r}") from exc
