"""The one message shape every runtime moves between coordinator and sites.

A protocol message (a job plan, a train request, an update, a secure-aggregation share) is
a kind, the run and round it belongs to, a fresh nonce, JSON-safe header fields and at most
one flat numeric vector. The in-process simulator passes envelopes by reference; the gRPC
transport converts them to protobuf in one serde module and streams the vector in chunks.

``sender`` is never read from the wire: the receiving transport fills it in from the
peer's authenticated identity (its TLS certificate), so a site cannot speak for another.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError

NONCE_BYTES = 16
MAX_HEADER_DEPTH = 32  # nesting of a header's JSON; real ones (a study plan) stay under 12
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # header integers: int64 or uint64

# dtypes a vector payload may carry: float32 parameters, ring elements for secure
# aggregation, bytes for ciphertexts. Anything else is refused before it is decoded.
PAYLOAD_DTYPES: frozenset[str] = frozenset(
    {"float32", "float64", "uint32", "uint64", "int64", "uint8"}
)


def new_nonce() -> bytes:
    """16 bytes from the OS CSPRNG: unique per message, so a replay is detectable."""
    return secrets.token_bytes(NONCE_BYTES)


@dataclass(frozen=True)
class Envelope:
    """One protocol message. Build with :meth:`create`, which draws the nonce."""

    kind: str
    run_id: str
    round: int
    nonce: bytes
    header: dict[str, Any] = field(default_factory=dict)
    vector: npt.NDArray[Any] | None = None
    sender: str = ""  # set by the receiver from the peer's certificate
    # Set by the first validate() that passes: a message is checked where it is created
    # or received, and again by the serializer and the codec; its fields never change
    # after that (frozen; headers are built before create), so one check is enough.
    # replace() builds a new, unchecked envelope.
    _valid: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        kind: str,
        run_id: str,
        round: int,
        header: dict[str, Any] | None = None,
        vector: npt.NDArray[Any] | None = None,
    ) -> Envelope:
        env = cls(kind, run_id, round, new_nonce(), dict(header or {}), vector)
        env.validate()
        return env

    def from_peer(self, identity: str) -> Envelope:
        """The same message stamped with the authenticated identity of who sent it."""
        env = replace(self, sender=identity)
        object.__setattr__(env, "_valid", self._valid)  # the sender is not checked
        return env

    def with_vector(self, vector: npt.NDArray[Any] | None) -> Envelope:
        """The same message carrying ``vector``, checked (the rest was, if ``self`` was)."""
        env = replace(self, vector=vector)
        if self._valid:
            env._check_vector()
            object.__setattr__(env, "_valid", True)
        else:
            env.validate()
        return env

    def validate(self) -> None:
        """Refuse a malformed envelope with a message that says which field is wrong."""
        if self._valid:
            return
        if not self.kind or not self.kind.replace("_", "").isalnum():
            raise ProtocolError(
                f"envelope kind must be a non-empty identifier, found {self.kind!r}"
            )
        if not self.run_id:
            raise ProtocolError(f"envelope '{self.kind}' has an empty run_id")
        if self.round < 0:
            raise ProtocolError(f"envelope '{self.kind}' has round {self.round}; expected >= 0")
        if len(self.nonce) != NONCE_BYTES:
            raise ProtocolError(
                f"envelope '{self.kind}' nonce must be {NONCE_BYTES} bytes, found {len(self.nonce)}"
            )
        problem = header_problem(self.header)
        if problem is not None:
            raise ProtocolError(f"envelope '{self.kind}' header {problem}")
        try:
            json.dumps(self.header, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"envelope '{self.kind}' header is not JSON-safe: {exc}") from exc
        self._check_vector()
        object.__setattr__(self, "_valid", True)

    def _check_vector(self) -> None:
        if self.vector is not None:
            vec = self.vector
            if vec.ndim != 1:
                raise ProtocolError(
                    f"envelope '{self.kind}' vector must be flat (1-D), found shape {vec.shape}"
                )
            if vec.dtype.name not in PAYLOAD_DTYPES:
                raise ProtocolError(
                    f"envelope '{self.kind}' vector dtype {vec.dtype} is not one of {sorted(PAYLOAD_DTYPES)}"
                )

    @property
    def nbytes(self) -> int:
        """Bytes of the vector payload (what dominates traffic)."""
        return 0 if self.vector is None else int(self.vector.nbytes)


def header_problem(header: dict[str, Any]) -> str | None:
    """What makes ``header`` unfit for the wire, or None: nesting deeper than
    MAX_HEADER_DEPTH, or an integer outside 64 bits (what every receiver refuses). Walked
    without recursion: a header nested deeper than the stack must be refused, not crash."""
    stack: list[tuple[Any, int]] = [(header, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            if depth + 1 > MAX_HEADER_DEPTH:
                return f"is nested more than {MAX_HEADER_DEPTH} levels deep"
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
            return f"holds an integer of {item.bit_length()} bits; at most 64 are allowed"
    return None


def as_float32(env: Envelope) -> npt.NDArray[np.float32]:
    """The envelope's vector as float32 parameters; a clear error if there is none or it is not float32."""
    if env.vector is None:
        raise ProtocolError(f"message '{env.kind}' from '{env.sender or '?'}' carries no vector")
    if env.vector.dtype != np.float32:
        raise ProtocolError(
            f"message '{env.kind}' from '{env.sender or '?'}' carries {env.vector.dtype}, expected float32"
        )
    return env.vector
