"""Partial participation: which sites take part in a round, seeded by (run, round)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream


@dataclass(frozen=True)
class Participation:
    """A fraction of the sites each round, never fewer than ``min_sites``."""

    fraction: float = 1.0
    min_sites: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"participation.fraction must be in (0, 1], found {self.fraction}")
        if self.min_sites < 1:
            raise ConfigError(f"participation.min_sites must be >= 1, found {self.min_sites}")

    def count(self, num_sites: int) -> int:
        if self.min_sites > num_sites:
            raise ConfigError(
                f"participation.min_sites is {self.min_sites} "
                f"but the study has only {num_sites} sites"
            )
        return max(self.min_sites, min(num_sites, math.ceil(self.fraction * num_sites)))


def sample_sites(
    num_sites: int, participation: Participation, seeds: SeedStream, round_index: int
) -> npt.NDArray[np.int64]:
    """Sorted indices of the sites that train in ``round_index``.

    Depends only on the run seed and the round, so a resumed run and the deployed
    coordinator pick the same sites as an uninterrupted simulation.
    """
    k = participation.count(num_sites)
    if k == num_sites:
        return np.arange(num_sites, dtype=np.int64)
    rng = seeds.generator("sampling", round_index)
    return np.sort(rng.choice(num_sites, size=k, replace=False)).astype(np.int64)
