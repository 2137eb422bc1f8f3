"""Where a simulated round's chunks of sites run.

The engine hands a backend the round's :class:`~fedcare.rounds.RoundPlan`, the chunks of
sampled sites and a :class:`~fedcare.rounds.ChunkResult` holding the round's aggregator;
the backend runs :meth:`FederatedSimulation.run_chunk` on every chunk and merges each
result into it. The in-process backend runs them in order into that one result, so a
run's model does not depend on the chunk size; another backend (Ray) may run them
anywhere, each into ``ChunkResult(start.aggregator.empty())``, and merge in a tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.records import SiteState
from fedcare.rounds.chunk import ChunkResult, RoundPlan

if TYPE_CHECKING:
    from fedcare.sim.engine import FederatedSimulation

Chunk = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RoundChunks:
    """One round's work for a backend: every chunk of ``plan``'s sampled sites, merged
    into ``start`` (which holds the round's aggregator)."""

    simulation: FederatedSimulation
    plan: RoundPlan
    site_states: Mapping[str, SiteState]
    chunks: Sequence[Chunk]
    start: ChunkResult


class Backend(Protocol):
    def map_chunks(self, work: RoundChunks) -> ChunkResult:
        """Run every chunk of ``work`` and merge the results into ``work.start``; return it."""
        ...


class InProcessBackend:
    """Every chunk in this process, one after the other, as one batched computation each."""

    def map_chunks(self, work: RoundChunks) -> ChunkResult:
        for chunk in work.chunks:
            work.simulation.run_chunk(work.plan, work.site_states, chunk, into=work.start)
        return work.start
