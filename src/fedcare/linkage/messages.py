"""The PSI messages and their byte encoding (no pickle: a peer's bytes are only parsed).

Every message names its sender and recipient so a relay (the coordinator, later) can route
it without reading it. What crosses the wire is blinded group elements, positions into a
party's own (shuffled) list, or a count: never an identifier, a key or a keyed hash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError


@dataclass(frozen=True)
class ElementBatch:
    """Batch ``seq`` of ``owner``'s set, blinded by every party it has visited so far."""

    sender: str
    recipient: str
    owner: str
    seq: int
    last: bool
    elements: bytes


@dataclass(frozen=True)
class MatchPositions:
    """Positions (into the recipient's sent list) of the intersection, in the joint order."""

    sender: str
    recipient: str
    positions: npt.NDArray[np.int64]


@dataclass(frozen=True)
class IntersectionSize:
    """The number of patients every party holds (cardinality mode)."""

    sender: str
    recipient: str
    count: int


PsiMessage = ElementBatch | MatchPositions | IntersectionSize

_KINDS: dict[type, int] = {ElementBatch: 1, MatchPositions: 2, IntersectionSize: 3}
_HEAD = struct.Struct("<BHHH")  # kind, lengths of sender, recipient, owner
_TAIL = struct.Struct("<QB")  # seq or count, last


def encode(message: PsiMessage) -> bytes:
    owner = message.owner if isinstance(message, ElementBatch) else ""
    names = [message.sender.encode(), message.recipient.encode(), owner.encode()]
    head = _HEAD.pack(_KINDS[type(message)], *(len(n) for n in names)) + b"".join(names)
    if isinstance(message, ElementBatch):
        return head + _TAIL.pack(message.seq, message.last) + message.elements
    if isinstance(message, MatchPositions):
        return head + _TAIL.pack(0, 0) + message.positions.astype("<i8").tobytes()
    return head + _TAIL.pack(message.count, 0)


def decode(data: bytes) -> PsiMessage:
    try:
        kind, *lengths = _HEAD.unpack_from(data, 0)
        at = _HEAD.size
        names = []
        for length in lengths:
            names.append(data[at : at + length].decode())
            at += length
        number, last = _TAIL.unpack_from(data, at)
        payload = data[at + _TAIL.size :]
    except (struct.error, UnicodeDecodeError) as error:
        raise ProtocolError(f"PSI message: cannot parse {len(data)} bytes ({error})") from error
    sender, recipient, owner = names
    if kind == 1:
        return ElementBatch(sender, recipient, owner, int(number), bool(last), bytes(payload))
    if kind == 2:
        if len(payload) % 8:
            raise ProtocolError(f"PSI positions from {sender!r}: {len(payload)} bytes, not int64s")
        return MatchPositions(
            sender, recipient, np.frombuffer(payload, dtype="<i8").astype(np.int64)
        )
    if kind == 3:
        return IntersectionSize(sender, recipient, int(number))
    raise ProtocolError(f"PSI message from {sender!r}: unknown kind {kind}")
