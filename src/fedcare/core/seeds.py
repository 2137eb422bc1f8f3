"""One central seed stream per run.

Every random choice (initial model, site sampling, batch order, noise) draws from a
generator keyed by what it is for, the round and the site. Results therefore do not
depend on batching, worker count or the order in which sites happen to be processed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_PURPOSES = (
    "init",
    "sampling",
    "batches",
    "dropout",
    "noise",
    "attack",
    "partition",
    "eval",
    "misc",
    "compress",
)


def _purpose_code(purpose: str) -> int:
    if purpose not in _PURPOSES:
        raise ValueError(f"unknown seed purpose '{purpose}'; known: {', '.join(_PURPOSES)}")
    # Stable across Python processes (unlike hash()).
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")


@dataclass(frozen=True)
class SeedStream:
    """Deterministic generators for ``(purpose, round, site)`` under one run seed."""

    run_seed: int

    def sequence(
        self, purpose: str, round_index: int = 0, site_index: int = 0
    ) -> np.random.SeedSequence:
        if round_index < 0 or site_index < 0:
            raise ValueError("round and site indices must be non-negative")
        key = (_purpose_code(purpose), round_index, site_index)
        return np.random.SeedSequence(entropy=self.run_seed, spawn_key=key)

    def generator(
        self, purpose: str, round_index: int = 0, site_index: int = 0
    ) -> np.random.Generator:
        return np.random.default_rng(self.sequence(purpose, round_index, site_index))

    def integer_seed(self, purpose: str, round_index: int = 0, site_index: int = 0) -> int:
        """A 63-bit integer seed, for libraries that take an int (torch.manual_seed)."""
        state = self.sequence(purpose, round_index, site_index).generate_state(2, dtype=np.uint32)
        return int((int(state[0]) << 31) ^ int(state[1]))
