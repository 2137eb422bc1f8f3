"""Who masks with whom: the SecAgg+ communication graph (Bell et al., CCS 2020).

Classic SecAgg pairs every client with every other one, so masking and key agreement cost
O(n) per client and O(n**2) in all. SecAgg+ pairs each client with ``degree`` neighbours
only. We use a Harary graph over a pseudo-random ordering of the clients: arrange them
on a circle (order fixed by a seed every party knows) and link each to the ``degree / 2``
nearest on either side. Every client then has exactly ``degree`` neighbours, and the
neighbourhoods are random subsets the server cannot choose. ``degree=None`` (or a degree
of at least n - 1) gives the complete graph, i.e. classic SecAgg.

A client's *holders* are its neighbours plus itself: the parties that hold shares of its
secrets.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from fedcare.core.errors import ConfigError


def secagg_plus_degree(num_clients: int) -> int:
    """A neighbourhood size of about 2*log2(n) (even), as Bell et al. suggest: O(log n)."""
    if num_clients < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients, found {num_clients}")
    degree = 2 * math.ceil(math.log2(num_clients))
    return min(degree, num_clients - 1)


class CommunicationGraph:
    """An undirected graph over client ids; immutable after construction."""

    def __init__(self, client_ids: Iterable[int], degree: int | None, seed: bytes) -> None:
        ids = sorted(set(client_ids))
        n = len(ids)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 clients, found {n}")
        self.client_ids: tuple[int, ...] = tuple(ids)
        if degree is None or degree >= n - 1:
            self.degree = n - 1
            everyone = frozenset(ids)
            self._neighbours = {c: everyone - {c} for c in ids}
            return
        if degree < 2 or degree % 2:
            raise ConfigError(
                f"SecAgg+ neighbourhood degree must be an even number >= 2, found {degree}"
            )
        self.degree = degree
        order = sorted(ids, key=lambda c: hashlib.sha256(seed + c.to_bytes(8, "big")).digest())
        half = degree // 2
        self._neighbours = {
            c: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0)
            for i, c in enumerate(order)
        }

    @property
    def is_complete(self) -> bool:
        return self.degree == len(self.client_ids) - 1

    def neighbours(self, client: int) -> frozenset[int]:
        """The clients ``client`` masks with (never itself)."""
        try:
            return self._neighbours[client]
        except KeyError:
            raise ConfigError(f"client {client} is not part of this secure aggregation") from None

    def holders(self, client: int) -> frozenset[int]:
        """The clients that hold shares of ``client``'s secrets (its neighbours and itself)."""
        return self.neighbours(client) | {client}
