"""How a message's fields look on the wire: typed header fields and vector layouts.

The declarations :mod:`.codec` reads. A header field's :class:`FieldType` writes it as JSON
and checks it on the way in (text, a bounded integer, a finite number, a mapping, ...); a
:class:`VectorLayout` packs a message's arrays into the at most one vector an envelope
carries: several arrays travel as one flat vector plus ``segments`` (name, size) in the
header, so the transport streams one vector. :class:`HeaderReader` turns a failed check
into an error naming the message, the sender and the field, what was expected and found.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope, as_float32

Segments = list[tuple[str, int]]
INT64_MAX = 2**63 - 1  # the largest integer a header field may hold


def finite(value: Any) -> bool:
    """A JSON number (not a bool) that is a finite float: 10**400 is not, NaN is not."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def count(value: Any, minimum: int) -> bool:
    """A JSON integer (not a bool) from ``minimum`` to INT64_MAX."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= INT64_MAX


def vector_digest(vector: npt.NDArray[Any] | None) -> str:
    """sha256 of a payload's bytes: the update hash the audit log records."""
    if vector is None:
        return hashlib.sha256(b"").hexdigest()
    # Hash the array's own memory (no copy: a 2 GB update must not be duplicated to hash it).
    flat = np.ascontiguousarray(vector).reshape(-1)
    return hashlib.sha256(flat.view(np.uint8).data).hexdigest()


def pack_segments(
    arrays: Mapping[str, npt.NDArray[Any]], dtype: type[np.generic] = np.float32
) -> tuple[npt.NDArray[Any], Segments]:
    """Concatenate named 1-D arrays into one vector; ``segments`` says where each one is."""
    segments: Segments = [(name, int(np.asarray(a).size)) for name, a in arrays.items()]
    if len(arrays) == 1:  # the common case (a model, a delta): no copy
        only = np.ascontiguousarray(next(iter(arrays.values())), dtype=dtype).reshape(-1)
        return only, segments
    total = sum(size for _, size in segments)
    out = np.empty(total, dtype=dtype)
    start = 0
    for (_, size), array in zip(segments, arrays.values(), strict=True):
        out[start : start + size] = np.asarray(array).reshape(-1)
        start += size
    return out, segments


def unpack_segments(
    vector: npt.NDArray[Any], segments: Segments, what: str
) -> dict[str, npt.NDArray[Any]]:
    """Split a vector by ``segments`` into views; refuses segments that do not tile it."""
    total = sum(size for _, size in segments)
    if total != vector.size:
        raise ProtocolError(
            f"{what}: segments cover {total} values but the vector has {vector.size}"
        )
    out: dict[str, npt.NDArray[Any]] = {}
    start = 0
    for name, size in segments:
        out[name] = vector[start : start + size]
        start += size
    return out


# -- header field types ------------------------------------------------------------------


class MismatchError(Exception):
    """A header value is not of its declared type; ``expected`` says what it must be."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


class FieldType(ABC):
    """How one header field is written to JSON and read back (raising :class:`MismatchError`).

    Declared in a message's annotation: ``data_ok: Annotated[bool, Flag()]``.
    """

    def write(self, value: Any) -> Any:
        return value  # most fields are JSON values already

    @abstractmethod
    def read(self, raw: Any) -> Any: ...


class Text(FieldType):
    def read(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise MismatchError("a string")
        return raw


class Flag(FieldType):
    def read(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise MismatchError("true or false")
        return raw


@dataclass(frozen=True)
class Integer(FieldType):
    minimum: int = 0

    def read(self, raw: Any) -> int:
        if not count(raw, self.minimum):
            raise MismatchError(f"an integer from {self.minimum} to {INT64_MAX}")
        return int(raw)


@dataclass(frozen=True)
class Number(FieldType):
    minimum: float | None = None

    def read(self, raw: Any) -> float:
        if not finite(raw) or (self.minimum is not None and float(raw) < self.minimum):
            at_least = "" if self.minimum is None else f" >= {self.minimum}"
            raise MismatchError(f"a finite number{at_least}")
        return float(raw)


class Json(FieldType):
    """A JSON object whose contents the receiving handler checks (a plan, data counts)."""

    def read(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise MismatchError("a mapping")
        return raw


class Strings(FieldType):
    def read(self, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise MismatchError("a list of strings")
        return list(raw)


class Numbers(FieldType):
    """Names to finite numbers (metrics)."""

    def read(self, raw: Any) -> dict[str, float]:
        value = Json().read(raw)
        if not all(finite(v) for v in value.values()):
            raise MismatchError("a mapping of names to finite numbers")
        return {k: float(v) for k, v in value.items()}


class SegmentList(FieldType):
    """``[[name, size], ...]`` with unique names: where each array sits in the vector."""

    def read(self, raw: Any) -> Segments:
        ok = isinstance(raw, list) and all(
            isinstance(s, list | tuple) and len(s) == 2 and isinstance(s[0], str) and count(s[1], 0)
            for s in raw
        )
        if not ok:
            raise MismatchError("a list of [name, size] pairs")
        segments = [(str(s[0]), int(s[1])) for s in raw]
        names = [n for n, _ in segments]
        if len(set(names)) != len(names):
            raise MismatchError("a list of [name, size] pairs with unique names")
        return segments


@dataclass(frozen=True)
class HeaderField:
    """A field's place in the header, when a bare :class:`FieldType` does not say enough.

    ``optional``: absent on the wire when the value is None. ``only_with``: written and
    read only when that other (optional) field is present; otherwise the field's default.
    """

    type: FieldType
    optional: bool = False
    only_with: str | None = None


class HeaderReader:
    """Typed, checked reads of one envelope's header; failures name message, sender, field."""

    def __init__(self, env: Envelope) -> None:
        self.env = env
        self.raw = env.header

    def fail(self, name: str, expected: str) -> ProtocolError:
        found = type(self.raw.get(name)).__name__ if name in self.raw else "nothing"
        who = f" from '{self.env.sender}'" if self.env.sender else ""
        return ProtocolError(
            f"message '{self.env.kind}'{who}: header field '{name}' must be {expected}, found {found}"
        )

    def read(self, name: str, type: FieldType) -> Any:
        try:
            return type.read(self.raw.get(name))
        except MismatchError as exc:
            raise self.fail(name, exc.expected) from None


# -- vector layouts ----------------------------------------------------------------------


class VectorLayout(Protocol):
    """How a message's array fields travel as the envelope's one vector."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The dataclass fields this layout writes and reads."""
        ...

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any] | None:
        """The vector for ``values``; may add header fields that describe it."""
        ...

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        """The fields back from the vector (and the header fields that describe it)."""
        ...


class NoVector:
    fields: tuple[str, ...] = ()

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> None:
        return None

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Float32:
    """One float32 array is the vector (a model sent for evaluation)."""

    name: str

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.name,)

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        vector: npt.NDArray[Any] = values[self.name]
        return vector

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        return {self.name: as_float32(env)}


@dataclass(frozen=True)
class Segmented:
    """A main float32 array plus named ones (``rest``), as one vector with ``segments``.

    ``what`` names the message in errors; ``{sender}`` in it becomes the sender.
    """

    main: str
    rest: str
    what: str

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.main, self.rest)

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        vector, header["segments"] = pack_segments(
            {self.main: values[self.main], **values[self.rest]}
        )
        return vector

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        what = self.what.format(sender=env.sender)
        parts = unpack_segments(as_float32(env), header.read("segments", SegmentList()), what)
        if self.main not in parts:
            raise ProtocolError(f"{what}: no '{self.main}' segment in the vector")
        return {self.main: parts.pop(self.main), self.rest: parts}
