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
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.records import SiteState
from fedcare.rounds.chunk import ChunkResult, RoundPlan

if TYPE_CHECKING:
    from fedcare.sim.engine import FederatedSimulation

Chunk = npt.NDArray[np.int64]


class Backend(Protocol):
    def map_chunks(
        self,
        simulation: FederatedSimulation,
        plan: RoundPlan,
        site_states: Mapping[str, SiteState],
        chunks: Sequence[Chunk],
        start: ChunkResult,
    ) -> ChunkResult:
        """Run every chunk of ``plan`` and merge the results into ``start``; return it."""
        ...


class InProcessBackend:
    """Every chunk in this process, one after the other, as one batched computation each."""

    def map_chunks(
        self,
        simulation: FederatedSimulation,
        plan: RoundPlan,
        site_states: Mapping[str, SiteState],
        chunks: Sequence[Chunk],
        start: ChunkResult,
    ) -> ChunkResult:
        for chunk in chunks:
            simulation.run_chunk(plan, site_states, chunk, into=start)
        return start
