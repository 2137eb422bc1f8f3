"""Message dispatch for the deployed machines: (job kind, phase, message kind) -> handler.

The coordinator and the site each hold one :class:`Router`. A handler is registered for a
message kind of a job kind (as :data:`~fedcare.runtime.codec.SCHEMAS` declares it) in one
phase of the machine, or in every phase (:data:`ANY`). :meth:`Router.route` decodes the
envelope with the one codec (raw kinds, the secure-sum steps, are left to their handler)
and finds the handler for the machine's current phase; what it cannot route comes back
as :class:`Unrouted`, and the machine answers with its own refusal. A new job kind
(federated statistics, record linkage, an asynchronous schedule) declares its messages
and registers its handlers; nothing here changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedcare.runtime.codec import SchemaTable
from fedcare.runtime.envelope import Envelope

ANY = "*"
"""A phase wildcard: the handler takes the message in whatever phase the machine is."""

M = TypeVar("M")  # the machine
R = TypeVar("R")  # what it returns per message (an Outgoing, an Envelope)

Handler = Callable[[M, Envelope, Any], list[R]]
"""``(machine, envelope, decoded message)``; raw kinds get None for the message."""


@dataclass(frozen=True)
class Routed(Generic[M, R]):
    handler: Handler[M, R]
    message: Any  # the decoded message; None for a raw kind

    def __call__(self, machine: M, env: Envelope) -> list[R]:
        return self.handler(machine, env, self.message)


@dataclass(frozen=True)
class Unrouted:
    """No handler for this kind in this phase; ``phases``: where it has one (may be none)."""

    kind: str
    phase: str
    phases: tuple[str, ...]


class Router(Generic[M, R]):
    """One machine's dispatch table; ``name`` ("coordinator", "site") is for errors."""

    def __init__(self, name: str, schemas: SchemaTable) -> None:
        self.name = name
        self.schemas = schemas
        self._table: dict[tuple[str, str, str], Handler[M, R]] = {}

    def on(self, job: str, phase: str, kind: str, handler: Handler[M, R]) -> None:
        """Route ``kind`` (a message of job kind ``job``) to ``handler`` in ``phase``."""
        declared = self.schemas.job_of(kind)
        if declared is None:
            raise ValueError(
                f"{self.name} router: message kind '{kind}' is not declared in the schema table"
            )
        if declared != job:
            raise ValueError(
                f"{self.name} router: message kind '{kind}' belongs to job kind "
                f"'{declared}', not '{job}'"
            )
        key = (job, phase, kind)
        if key in self._table:
            raise ValueError(f"{self.name} router: ({job}, {phase}, {kind}) already has a handler")
        self._table[key] = handler

    def routes(self) -> list[tuple[str, str, str]]:
        """Every (job kind, phase, message kind) that has a handler."""
        return list(self._table)

    def off(self, job: str, phase: str, kind: str) -> None:
        """Remove a route (a job kind withdrawn)."""
        del self._table[(job, phase, kind)]

    def route(self, env: Envelope, phase: str) -> Routed[M, R] | Unrouted:
        """The handler for ``env`` in ``phase``, with the decoded message.

        Raises ProtocolError for an unknown kind or a malformed message.
        """
        raw = self.schemas.is_raw(env.kind)
        message = None if raw else self.schemas.decode(env)
        job = self.schemas.job_of(env.kind) or ""
        handler = self._table.get((job, phase, env.kind)) or self._table.get((job, ANY, env.kind))
        if handler is None:
            phases = tuple(p for j, p, k in self._table if (j, k) == (job, env.kind))
            return Unrouted(env.kind, phase, phases)
        return Routed(handler, message)
