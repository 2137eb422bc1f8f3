"""Refuse replayed, misdirected, late and duplicate messages, with memory that stays bounded.

Every envelope carries a fresh 16-byte nonce, its run id and its round. A receiver keeps
the nonces it has seen (the newest ``nonce_capacity`` of them), the round that is open,
and for messages that may arrive only once per site and round (an update) the keys it has
accepted in the open round. Anything from a closed round is late whatever its nonce, so
forgetting old nonces and old rounds' keys never lets a replay of a closed round through.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope

RejectReason = Literal["replayed", "wrong_run", "late", "early", "duplicate"]


@dataclass(frozen=True)
class Rejection:
    """Why a message was refused; ``detail`` is what the log and the sender see."""

    reason: RejectReason
    detail: str

    def error(self) -> ProtocolError:
        return ProtocolError(f"{self.reason}: {self.detail}")


class ReplayGuard:
    """Admission check for one receiver in one run.

    ``open_round(r)`` marks round ``r`` as the one in progress: round-bound messages for an
    earlier round are late, for a later one early.
    """

    def __init__(self, run_id: str, *, nonce_capacity: int = 100_000) -> None:
        if nonce_capacity < 1:
            raise ValueError(f"nonce_capacity must be >= 1, found {nonce_capacity}")
        self.run_id = run_id
        self.current_round = 0
        self._capacity = nonce_capacity
        self._nonces: set[bytes] = set()
        self._order: deque[bytes] = deque()
        self._once: set[tuple[str, int, Hashable]] = set()

    def open_round(self, round_index: int) -> None:
        """Start accepting messages of ``round_index``; keys of earlier rounds are dropped."""
        if round_index < self.current_round:
            raise ProtocolError(
                f"round {round_index} cannot be opened after round {self.current_round}"
            )
        if round_index != self.current_round:
            self._once = {k for k in self._once if k[1] >= round_index}
        self.current_round = round_index

    def check(
        self,
        env: Envelope,
        *,
        round_bound: bool = True,
        once_per_site: Hashable | None = None,
        any_run: bool = False,
    ) -> Rejection | None:
        """None if ``env`` is admitted (and remembered), else why it is refused.

        ``round_bound``: the message belongs to the open round (updates, evaluations).
        ``once_per_site``: at most one such message per sender and round (e.g. "update"
        and the attempt number). ``any_run``: a greeting sent before the sender knew the run.
        """
        who = env.sender or "?"
        if env.nonce in self._nonces:
            return Rejection(
                "replayed", f"'{env.kind}' from '{who}' repeats a nonce already received"
            )
        self._remember(env.nonce)
        if not any_run and env.run_id != self.run_id:
            return Rejection(
                "wrong_run",
                f"'{env.kind}' from '{who}' is for run '{env.run_id}', this is run '{self.run_id}'",
            )
        if round_bound and env.round < self.current_round:
            return Rejection(
                "late",
                f"'{env.kind}' from '{who}' is for round {env.round}, which is over "
                f"(round {self.current_round} is open)",
            )
        if round_bound and env.round > self.current_round:
            return Rejection(
                "early",
                f"'{env.kind}' from '{who}' is for round {env.round}, "
                f"but round {self.current_round} is open",
            )
        if once_per_site is not None:
            key = (who, env.round, once_per_site)
            if key in self._once:
                return Rejection(
                    "duplicate",
                    f"'{env.kind}' from '{who}' for round {env.round} was already received",
                )
            self._once.add(key)
        return None

    def _remember(self, nonce: bytes) -> None:
        self._nonces.add(nonce)
        self._order.append(nonce)
        if len(self._order) > self._capacity:
            self._nonces.discard(self._order.popleft())

    @property
    def remembered(self) -> int:
        """How many nonces and once-keys are held (bounded by capacity + one round's keys)."""
        return len(self._nonces) + len(self._once)
