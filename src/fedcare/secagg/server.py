"""The server (coordinator) side of SecAgg / SecAgg+ as a sans-IO state machine.

Each stage collects one message type from the clients that completed the previous stage.
The stage closes when all of them have answered (inside :meth:`SecAggServer.handle`) or
when the runtime's deadline passes (:meth:`SecAggServer.close_stage`). Closing a stage
with fewer than ``survivor_floor`` clients, or with a client whose secrets can no longer
be recovered from ``threshold`` holders, aborts with ProtocolError: the server never
outputs a sum it cannot fully unmask. Masked inputs are summed on arrival, so the server
holds one vector, not n.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.secagg import messages as sm
from fedcare.secagg import shamir
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.crypto import KEY_BYTES, NONCE_BYTES, KeyPair, RingVector
from fedcare.secagg.masks import (
    Mask,
    add_masks_threaded,
    default_workers,
    pair_seed,
    pair_sign,
)


class ServerState(Enum):
    COLLECT_KEYS = "collect_keys"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED = "collect_masked"
    COLLECT_UNMASK = "collect_unmask"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked sum of the inputs of ``included`` (the clients whose masked input came)."""

    total: npt.NDArray[np.float32]
    ring_total: RingVector
    included: frozenset[int]


class SecAggServer:
    """The coordinator's part in one secure aggregation.

    ``workers`` is how many threads expand masks when unmasking (default: half the cores
    this process may use, one for short vectors); the sum does not depend on it.
    """

    def __init__(self, config: SecAggConfig, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"secagg server needs at least 1 worker thread, found {workers}")
        self.config = config
        self.workers = workers if workers is not None else default_workers(config.vector_length)
        self.state = ServerState.COLLECT_KEYS
        self.completed: dict[sm.Stage, frozenset[int]] = {}
        self._expected = frozenset(config.client_ids)
        self._received: set[int] = set()
        self._keys: dict[int, sm.PublicKeys] = {}
        self._sealed: dict[tuple[int, int], sm.EncryptedShare] = {}  # (sender, recipient)
        self._sum = np.zeros(config.vector_length, dtype=np.uint32)
        self._requests: dict[int, sm.UnmaskRequest] = {}
        self._responses: list[sm.UnmaskResponse] = []
        self._result: AggregateResult | None = None

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise ProtocolError(f"secure aggregation has no result (state {self.state.value})")
        return self._result

    def handle(self, message: sm.ClientMessage) -> list[sm.ServerMessage]:
        """Accept one client message; returns the next stage's messages once all are in."""
        entry = _TRANSITIONS.get((self.state, type(message)))
        if entry is None:
            raise ProtocolError(
                f"server in state {self.state.value} does not accept {type(message).__name__} "
                f"from client {message.sender}"
            )
        if message.session_id != self.config.session_id:
            raise ProtocolError(f"message from client {message.sender} is from another session")
        if message.sender not in self._expected:
            raise ProtocolError(
                f"client {message.sender} is not taking part in stage {message.stage.name}"
            )
        if message.sender in self._received:
            raise ProtocolError(f"duplicate {type(message).__name__} from client {message.sender}")
        entry(self, message)
        self._received.add(message.sender)
        return self.close_stage() if self._received == self._expected else []

    def close_stage(self) -> list[sm.ServerMessage]:
        """Close the current stage with whoever answered (call when the deadline passes)."""
        entry = _CLOSERS.get(self.state)
        if entry is None:
            raise ProtocolError(f"server in state {self.state.value} has no stage to close")
        closer, stage, next_state = entry
        alive = frozenset(self._received)
        try:
            if len(alive) < self.config.survivor_floor:
                raise ProtocolError(
                    f"only {len(alive)} clients completed {stage.name}; at least "
                    f"{self.config.survivor_floor} are required"
                )
            replies = closer(self, alive)
        except ProtocolError:
            self.state = ServerState.ABORTED
            raise
        self.completed[stage] = alive
        self._expected, self._received = alive, set()
        self.state = next_state
        return replies

    # -- per-message checks and storage -------------------------------------------------

    def _on_keys(self, message: sm.AdvertiseKeys) -> None:
        keys = message.keys
        if keys.client != message.sender:
            raise ProtocolError(f"client {message.sender} advertises keys of {keys.client}")
        if len(keys.c_pk) != KEY_BYTES or len(keys.s_pk) != KEY_BYTES or keys.c_pk == keys.s_pk:
            raise ProtocolError(f"client {message.sender} advertised malformed public keys")
        self._keys[message.sender] = keys

    def _on_shares(self, message: sm.ShareKeys) -> None:
        sender = message.sender
        expected = self.config.graph.neighbours(sender) & self.completed[sm.Stage.ADVERTISE_KEYS]
        recipients = [s.recipient for s in message.shares]
        if any(s.sender != sender or len(s.nonce) != NONCE_BYTES for s in message.shares):
            raise ProtocolError(f"client {sender} sent shares claiming another sender")
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            raise ProtocolError(
                f"client {sender} must send one share to each of {sorted(expected)}, "
                f"found {sorted(recipients)}"
            )
        for item in message.shares:
            self._sealed[sender, item.recipient] = item

    def _on_masked(self, message: sm.MaskedInput) -> None:
        vector = message.vector
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32:
            raise ProtocolError(f"client {message.sender}: masked input must be a uint32 array")
        if vector.shape != (self.config.vector_length,):
            raise ProtocolError(
                f"client {message.sender}: masked input has shape {vector.shape}, "
                f"expected ({self.config.vector_length},)"
            )
        np.add(self._sum, vector, out=self._sum)

    def _on_unmask(self, message: sm.UnmaskResponse) -> None:
        request = self._requests[message.sender]
        x = self.config.point(message.sender)
        for revealed, wanted in (
            (message.self_mask_shares, request.self_mask_owners),
            (message.secret_key_shares, request.secret_key_owners),
        ):
            owners = [r.owner for r in revealed]
            if len(set(owners)) != len(owners) or set(owners) != wanted:
                raise ProtocolError(f"client {message.sender} did not answer what was asked")
            if any(r.share.x != x for r in revealed):
                raise ProtocolError(f"client {message.sender} sent a share of another holder")
        self._responses.append(message)

    # -- stage closers ------------------------------------------------------------------

    def _close_keys(self, alive: frozenset[int]) -> list[sm.ServerMessage]:
        graph = self.config.graph
        return [
            sm.KeyDirectory(
                self.config.session_id,
                v,
                tuple(self._keys[u] for u in sorted(graph.neighbours(v) & alive)),
            )
            for v in sorted(alive)
        ]

    def _close_shares(self, alive: frozenset[int]) -> list[sm.ServerMessage]:
        self._require_recoverable(alive, alive)
        graph = self.config.graph
        return [
            sm.ForwardedShares(
                self.config.session_id,
                v,
                tuple(self._sealed[u, v] for u in sorted(graph.neighbours(v) & alive)),
            )
            for v in sorted(alive)
        ]

    def _close_masked(self, alive: frozenset[int]) -> list[sm.ServerMessage]:
        shared = self.completed[sm.Stage.SHARE_KEYS]
        self._require_recoverable(shared, alive)
        dropped = shared - alive
        graph = self.config.graph
        self._requests = {
            v: sm.UnmaskRequest(
                self.config.session_id,
                v,
                survivors=alive,
                self_mask_owners=graph.holders(v) & alive,
                secret_key_owners=graph.neighbours(v) & dropped,
            )
            for v in sorted(alive)
        }
        return list(self._requests.values())

    def _close_unmask(self, alive: frozenset[int]) -> list[sm.ServerMessage]:
        survivors = self.completed[sm.Stage.MASKED_INPUT]
        dropped = self.completed[sm.Stage.SHARE_KEYS] - survivors
        self._require_recoverable(survivors | dropped, alive)
        b_shares: dict[int, list[shamir.Share]] = {}
        s_shares: dict[int, list[shamir.Share]] = {}
        for response in self._responses:
            for r in response.self_mask_shares:
                b_shares.setdefault(r.owner, []).append(r.share)
            for r in response.secret_key_shares:
                s_shares.setdefault(r.owner, []).append(r.share)
        t, session = self.config.threshold, self.config.session_id
        # Every secret first (all checks pass before anything is expanded), then one pass
        # on the worker threads that strips all masks, each with the opposite of the sign
        # it had in the survivors' inputs: survivors' self masks, and the masks survivors
        # shared with dropped clients, whose seeds (X25519 + HKDF) are derived as they go.
        self_seeds = shamir.combine_many({u: b_shares.get(u, []) for u in survivors}, t)
        secret_keys = shamir.combine_many({d: s_shares.get(d, []) for d in dropped}, t)
        masks: list[Mask] = [(self_seeds[u], -1) for u in sorted(survivors)]
        for d in sorted(dropped):
            s_keys = KeyPair.from_private(secret_keys[d])
            if s_keys.public != self._keys[d].s_pk:
                raise ProtocolError(f"recovered secret key of client {d} does not match its key")
            for u in sorted(self.config.graph.neighbours(d) & survivors):
                seed = partial(pair_seed, s_keys, d, self._keys[u].s_pk, u, session)
                masks.append((seed, -pair_sign(u, d)))
        total = self._sum.copy()
        add_masks_threaded(total, masks, self.workers)
        self._result = AggregateResult(
            self.config.ring.decode_sum(total, len(survivors)), total, survivors
        )
        return []

    def _require_recoverable(self, owners: Iterable[int], holders_alive: frozenset[int]) -> None:
        """Abort now if some client's secrets can no longer reach ``threshold`` holders."""
        graph, t = self.config.graph, self.config.threshold
        for u in sorted(owners):
            left = len(graph.holders(u) & holders_alive)
            if left < t:
                raise ProtocolError(
                    f"client {u}'s secrets are held by only {left} remaining clients, "
                    f"threshold is {t}: too many clients dropped to unmask the sum"
                )


_Handler = Callable[[SecAggServer, Any], None]
_Closer = Callable[[SecAggServer, frozenset[int]], list[sm.ServerMessage]]

_TRANSITIONS: dict[tuple[ServerState, type], _Handler] = {
    (ServerState.COLLECT_KEYS, sm.AdvertiseKeys): SecAggServer._on_keys,
    (ServerState.COLLECT_SHARES, sm.ShareKeys): SecAggServer._on_shares,
    (ServerState.COLLECT_MASKED, sm.MaskedInput): SecAggServer._on_masked,
    (ServerState.COLLECT_UNMASK, sm.UnmaskResponse): SecAggServer._on_unmask,
}

_CLOSERS: dict[ServerState, tuple[_Closer, sm.Stage, ServerState]] = {
    ServerState.COLLECT_KEYS: (
        SecAggServer._close_keys,
        sm.Stage.ADVERTISE_KEYS,
        ServerState.COLLECT_SHARES,
    ),
    ServerState.COLLECT_SHARES: (
        SecAggServer._close_shares,
        sm.Stage.SHARE_KEYS,
        ServerState.COLLECT_MASKED,
    ),
    ServerState.COLLECT_MASKED: (
        SecAggServer._close_masked,
        sm.Stage.MASKED_INPUT,
        ServerState.COLLECT_UNMASK,
    ),
    ServerState.COLLECT_UNMASK: (SecAggServer._close_unmask, sm.Stage.UNMASKING, ServerState.DONE),
}
