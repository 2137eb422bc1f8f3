"""What every party of one secure aggregation agrees on before it starts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fedcare.core.errors import ConfigError
from fedcare.secagg.graph import CommunicationGraph
from fedcare.secagg.ring import FixedPointRing

_MAX_CLIENT_ID = 2**32 - 2  # Shamir points are id + 1 and travel as uint32


@dataclass(frozen=True)
class SecAggConfig:
    """One aggregation: the session, the clients, the threshold, the ring and the graph.

    ``session_id`` must be unique per aggregation (e.g. a hash of study id and round): it
    salts every derived key and goes into every message, so nothing from one round can be
    replayed into another. ``threshold`` is the Shamir threshold among each client's
    holders (all clients for the complete graph); it must be a strict majority of them so
    that the server cannot collect both secrets of a client from honest holders.
    ``min_survivors`` (default: ``threshold``) is the fewest clients allowed at any stage:
    below it the server aborts rather than output a sum of too few inputs.
    ``degree=None`` is classic SecAgg; an even degree selects SecAgg+ neighbourhoods.
    """

    session_id: bytes
    client_ids: tuple[int, ...]
    vector_length: int
    threshold: int
    ring: FixedPointRing
    degree: int | None = None
    min_survivors: int | None = None
    graph: CommunicationGraph = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.session_id) < 16:
            raise ConfigError(
                f"secagg session_id must be at least 16 bytes, found {len(self.session_id)}"
            )
        ids = self.client_ids
        if len(set(ids)) != len(ids):
            raise ConfigError(f"secagg client ids must be distinct, found {sorted(ids)}")
        if any(not 0 <= c <= _MAX_CLIENT_ID for c in ids):
            raise ConfigError(f"secagg client ids must be in [0, {_MAX_CLIENT_ID}]")
        if self.vector_length < 1:
            raise ConfigError(f"secagg vector_length must be positive, found {self.vector_length}")
        if len(ids) > self.ring.max_clients:
            raise ConfigError(
                f"{len(ids)} clients but the ring is sized for {self.ring.max_clients}; "
                f"raise FixedPointRing.max_clients"
            )
        seed = hashlib.sha256(b"fedcare/secagg/graph" + self.session_id).digest()
        graph = CommunicationGraph(ids, self.degree, seed)
        object.__setattr__(self, "graph", graph)
        holders = graph.degree + 1
        if not holders // 2 < self.threshold <= holders:
            raise ConfigError(
                f"secagg threshold must be a strict majority of the {holders} share holders "
                f"per client, i.e. in [{holders // 2 + 1}, {holders}], found {self.threshold}"
            )
        if not 1 <= self.survivor_floor <= len(ids):
            raise ConfigError(f"secagg min_survivors must be in [1, {len(ids)}]")

    @property
    def survivor_floor(self) -> int:
        return self.threshold if self.min_survivors is None else self.min_survivors

    @staticmethod
    def point(client: int) -> int:
        """The Shamir evaluation point of a client (never 0, which is the secret)."""
        return client + 1
