"""One round's secure sum in a deployed run: SecAgg (or SecAgg+) between the machines.

The coordinator announces the round's session in each train request (:class:`SecureRound`:
a fresh session id, the member sites' indices, the public weight scale). Each member
trains, turns its update into the vector the simulator would feed the secure sum
(:func:`secure_input`) and runs a :class:`~fedcare.secagg.SecAggClient` on it; the
coordinator runs a :class:`~fedcare.secagg.SecAggServer` through
:class:`SecureSumCollector`, which closes a stage once every live member has answered,
or at the stage's deadline, and drops members that disconnect or fail. It learns only the
sum of the survivors' vectors; too many dropouts abort the round loudly (ProtocolError),
never a wrong sum.

:func:`secagg_config` is shared with the simulator, so both run the same protocol
parameters (threshold, SecAgg+ degree, fixed-point ring).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.rounds.secure import mean_of_sum as mean_of_sum
from fedcare.rounds.secure import secagg_config as secagg_config
from fedcare.rounds.secure import secure_input as secure_input
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.secure_wire import parse_client, server_envelope
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.messages import ServerMessage, Stage
from fedcare.secagg.server import SecAggServer, ServerState


@dataclass(frozen=True)
class SecureRound:
    """What a member needs to join one round's secure sum (sent in its train request)."""

    session: bytes
    members: tuple[int, ...]  # plan site indices asked to train this round
    weight_scale: float  # public bound on every site's aggregation weight

    @classmethod
    def new(
        cls, run_id: str, round_: int, attempt: int, members: Sequence[int], weight_scale: float
    ) -> SecureRound:
        """A fresh session: run, round and attempt plus coordinator randomness."""
        salt = secrets.token_bytes(16)
        session = hashlib.sha256(
            f"fedcare/deploy/secagg/{run_id}/{round_}/{attempt}/".encode() + salt
        ).digest()
        return cls(session, tuple(sorted(members)), float(weight_scale))


Addressed = tuple[int, Envelope]  # (member site index, message to it)


@dataclass(frozen=True, eq=False)
class SumOutcome:
    """The unmasked (or decrypted) sum and the members whose input it holds."""

    total: npt.NDArray[np.float32]
    included: frozenset[int]


class SecureSum(Protocol):
    """The coordinator's side of one round's secure sum, whatever the protocol.

    ``waiting``: live members whose answer the open stage awaits; ``deadline``: when the
    open stage closes without them; ``lost``: members dropped, with why. ``receive`` raises
    ProtocolError for a bad message (the member is then dropped by the caller); a step
    that leaves too few members raises ProtocolError with ``aborted`` set.
    """

    waiting: set[int]
    lost: dict[int, str]
    deadline: float

    @property
    def done(self) -> bool: ...

    @property
    def aborted(self) -> bool: ...

    def outcome(self) -> SumOutcome: ...

    def receive(self, member: int, env: Envelope, now: float) -> list[Addressed]: ...

    def drop(self, member: int, reason: str, now: float) -> list[Addressed]: ...

    def expire(self, now: float) -> list[Addressed]: ...


_COLLECTING = {
    ServerState.COLLECT_KEYS: Stage.ADVERTISE_KEYS,
    ServerState.COLLECT_SHARES: Stage.SHARE_KEYS,
    ServerState.COLLECT_MASKED: Stage.MASKED_INPUT,
    ServerState.COLLECT_UNMASK: Stage.UNMASKING,
}


@dataclass
class SecureSumCollector:
    """The coordinator's side of one round's SecAgg over the round's member sites.

    ``deadline`` is the open stage's: the round deadline while members train and
    advertise keys, then ``stage_timeout_s`` per later stage.
    """

    config: SecAggConfig
    stage_timeout_s: float
    deadline: float
    run_id: str
    round: int
    attempt: int
    server: SecAggServer = field(init=False)
    waiting: set[int] = field(init=False)  # live members that have not answered this stage
    lost: dict[int, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.server = SecAggServer(self.config)
        self.waiting = set(self.config.client_ids)

    @property
    def stage(self) -> Stage | None:
        return _COLLECTING.get(self.server.state)

    @property
    def done(self) -> bool:
        return self.server.state is ServerState.DONE

    @property
    def aborted(self) -> bool:
        return self.server.state is ServerState.ABORTED

    def outcome(self) -> SumOutcome:
        result = self.server.result
        return SumOutcome(result.total, result.included)

    def receive(self, member: int, env: Envelope, now: float) -> list[Addressed]:
        """One member's message of the open stage; ProtocolError leaves nothing changed."""
        message = parse_client(env, member)
        if member not in self.waiting:
            stage = self.stage.name if self.stage is not None else "none"
            raise ProtocolError(
                f"site #{member} is not awaited in stage {stage} of this secure sum"
            )
        if message.stage is not self.stage:
            raise ProtocolError(
                f"site #{member} sent a {message.stage.name} message during stage "
                f"{self.stage.name if self.stage is not None else 'none'}"
            )
        before = self.stage
        replies = self.server.handle(message)
        self.waiting.discard(member)
        return self._advance(before, replies, now)

    def drop(self, member: int, reason: str, now: float) -> list[Addressed]:
        """A member is gone (disconnected, failed, refused): the stage closes without it."""
        if member not in self.waiting:
            return []
        self.waiting.discard(member)
        self.lost[member] = reason
        return self._advance(self.stage, [], now)

    def expire(self, now: float) -> list[Addressed]:
        """The stage's deadline passed: close it with whoever answered."""
        if self.stage is None or now < self.deadline:
            return []
        for member in sorted(self.waiting):
            self.lost[member] = f"missed the {self.stage.name} deadline"
        self.waiting.clear()
        return self._advance(self.stage, [], now)

    def _advance(
        self, before: Stage | None, replies: list[ServerMessage], now: float
    ) -> list[Addressed]:
        """Close the stage ``before`` once nobody is awaited; open the next one."""
        if before is not None:
            if self.stage is before and not self.waiting:
                replies = self.server.close_stage()  # ProtocolError if too few are left
            if self.stage is not before:  # the next stage awaits the survivors of this one
                self.waiting = set(self.server.completed[before])
                self.deadline = now + self.stage_timeout_s
        return [
            (m.recipient, server_envelope(m, self.run_id, self.round, self.attempt))
            for m in replies
        ]
