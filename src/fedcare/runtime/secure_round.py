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
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.secure_wire import parse_client, server_envelope
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.messages import ServerMessage, Stage
from fedcare.secagg.ring import FixedPointRing
from fedcare.secagg.server import SecAggServer, ServerState
from fedcare.transforms.secure import SecureSpec


def secagg_config(
    spec: SecureSpec, members: Sequence[int], length: int, session_id: bytes
) -> SecAggConfig:
    """The protocol parameters every party of one secure sum derives from the plan."""
    ids = tuple(sorted(members))
    if len(ids) < 2:
        raise ConfigError(
            f"secure aggregation needs at least 2 sites in a round, found {len(ids)}; "
            "raise the participation fraction or min_sites"
        )
    degree = spec.degree if spec.degree and spec.degree < len(ids) - 1 else None
    holders = (degree if degree else len(ids) - 1) + 1
    threshold = max(holders // 2 + 1, math.ceil(spec.threshold * holders))
    return SecAggConfig(
        session_id=session_id,
        client_ids=ids,
        vector_length=length,
        threshold=min(threshold, holders),
        ring=FixedPointRing(clip=spec.value_range, max_clients=len(ids)),
        degree=degree,
    )


def secure_input(
    delta: npt.NDArray[np.float32], weight: float, weight_scale: float, *, private: bool
) -> npt.NDArray[np.float32]:
    """What a site feeds the secure sum.

    With client-level DP, its clipped and noised update (DP-FedAvg sums them unweighted);
    otherwise ``[w * delta, w]`` with ``w = weight / weight_scale`` (public and at most 1,
    so every entry stays inside the ring), from which the coordinator takes the mean.
    """
    if private:
        return np.ascontiguousarray(delta, dtype=np.float32)
    w = np.float32(weight / weight_scale)
    return np.concatenate([delta * w, [w]]).astype(np.float32)


def mean_of_sum(total: npt.NDArray[np.float32], round_index: int) -> npt.NDArray[np.float32]:
    """The weighted mean update from the sum of ``[w * delta, w]`` vectors."""
    weight = float(total[-1])
    if not weight > 0:
        raise ProtocolError(f"secure sum of round {round_index} carries no weight")
    mean: npt.NDArray[np.float32] = (total[:-1] / weight).astype(np.float32)
    return mean


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
