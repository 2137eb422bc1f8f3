"""A round as "map a chunk function over chunks of sampled sites, merge the results".

:class:`RoundPlan` is what every chunk of a round shares (fixed by the coordinator at
round start); :class:`ChunkResult` is what one chunk of sites gives back. Results merge
(``merge``) in any tree, so a backend may run chunks anywhere (threads, Ray tasks,
machines) and combine them pairwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.records import ServerState, SiteState
from fedcare.core.vectors import FloatVector
from fedcare.rounds.aggregators import Aggregator


@dataclass(frozen=True)
class RoundPlan:
    """One round as every chunk sees it.

    ``state``: the server state the round starts from; ``sampled``: the plan indices of
    the sites asked; ``context``: the strategy's personal-pass context (MOCHA's task
    relationship), None without one.
    """

    state: ServerState
    sampled: npt.NDArray[np.int64]
    context: Any = None

    @property
    def round_index(self) -> int:
        """The 1-based index of the round (keys its random draws)."""
        return self.state.round + 1

    @property
    def cohort(self) -> int:
        return len(self.sampled)

    def chunks(self, size: int) -> list[npt.NDArray[np.int64]]:
        """The sampled sites in consecutive chunks of at most ``size``."""
        step = max(size, 1)
        return [self.sampled[i : i + step] for i in range(0, len(self.sampled), step)]


@dataclass
class ChunkResult:
    """What a chunk of sites gives back: the partial aggregate of their uploads, their new
    states (by name), the bytes each sent, the sum of ``train_loss * num_samples`` and of
    ``num_samples``, and the personal models a collecting pass reports (by site index)."""

    aggregator: Aggregator
    site_states: dict[str, SiteState] = field(default_factory=dict)
    upload_bytes: dict[str, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    samples: int = 0
    collected: dict[int, FloatVector] = field(default_factory=dict)

    def merge(self, other: ChunkResult) -> ChunkResult:
        """This result with ``other``'s sites folded in (``self`` is extended in place)."""
        self.aggregator.merge(other.aggregator)
        self.site_states.update(other.site_states)
        self.upload_bytes.update(other.upload_bytes)
        self.loss_sum += other.loss_sum
        self.samples += other.samples
        self.collected.update(other.collected)
        return self
