"""One codec for every protocol message: declared fields in, checked envelopes out.

A message is a frozen dataclass whose fields say where each value travels:

- ``run_id``, ``round`` and ``sender`` are the envelope's own (``sender`` is never read
  from the wire: the receiving transport sets it from the peer's certificate);
- a field annotated with a :class:`FieldType` (``attempt: Annotated[int, Integer()]``) is
  one JSON header field of that type (text, a bounded integer, a finite number, ...),
  checked on the way in;
- the rest belong to the message's :class:`VectorLayout`, which packs them into the at most
  one vector an envelope carries (several arrays travel as one flat vector plus
  ``segments`` (name, size) in the header, so the transport streams one vector).

:class:`SchemaTable` holds the declarations, kind -> :class:`MessageSchema`, each under the
job kind its messages belong to (``session``, ``train``, ``evaluate``; later kinds add
theirs); :meth:`SchemaTable.encode` and :meth:`SchemaTable.decode` are the only code that
turns messages into envelopes and back. Every refusal names the message, the sender and
the field, and says what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast, get_type_hints

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope, as_float32

Segments = list[tuple[str, int]]
INT64_MAX = 2**63 - 1  # the largest integer a header field may hold
ENVELOPE_FIELDS = ("run_id", "round", "sender")


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


class FieldType:
    """How one header field is written to JSON and read back (raising :class:`MismatchError`).

    Declared in a message's annotation: ``data_ok: Annotated[bool, Flag()]``.
    """

    def write(self, value: Any) -> Any:
        return value  # most fields are JSON values already

    def read(self, raw: Any) -> Any:
        raise NotImplementedError


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


def _header_field(hint: Any) -> HeaderField | None:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, HeaderField):
            return meta
        if isinstance(meta, FieldType):
            return HeaderField(meta)
    return None


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


# -- the schema table --------------------------------------------------------------------


class WireMessage:
    """Base of every protocol message: encoded and checked by the one codec."""

    KIND: ClassVar[str]
    sender: str

    def to_envelope(self) -> Envelope:
        return SCHEMAS.encode(self)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        if env.kind != cls.KIND:
            raise ProtocolError(f"expected a '{cls.KIND}' message, found '{env.kind}'")
        return cast(Self, SCHEMAS.decode_fields(env))  # the table maps KIND to cls


@dataclass(frozen=True)
class MessageSchema:
    """One message kind: its job kind, dataclass, header fields and vector layout."""

    kind: str
    job: str
    cls: type[WireMessage]
    header: tuple[tuple[str, HeaderField], ...]
    vector: VectorLayout
    run_id_if_empty: str | None = None  # ErrorReport before any run: the no-run id
    envelope: tuple[str, ...] = ENVELOPE_FIELDS  # the envelope fields the dataclass has

    @classmethod
    def of(
        cls,
        message: type[WireMessage],
        job: str,
        vector: VectorLayout,
        run_id_if_empty: str | None,
    ) -> MessageSchema:
        """Read the declaration off the dataclass; every field must have a place."""
        header_fields: list[tuple[str, HeaderField]] = []
        hints = get_type_hints(message, include_extras=True)
        names = [f.name for f in dataclasses.fields(message)]  # type: ignore[arg-type]
        for name in names:
            spec = _header_field(hints[name])
            if spec is not None:
                header_fields.append((name, spec))
            elif name not in ENVELOPE_FIELDS and name not in vector.fields:
                raise TypeError(
                    f"message '{message.KIND}': field '{name}' is neither an envelope "
                    "field, an Annotated header field nor part of the vector layout"
                )
        envelope = tuple(n for n in ENVELOPE_FIELDS if n in names)
        return cls(
            message.KIND, job, message, tuple(header_fields), vector, run_id_if_empty, envelope
        )


M = TypeVar("M", bound=WireMessage)


class SchemaTable(Mapping[str, MessageSchema]):
    """kind -> schema for every typed message the protocol knows (raw kinds are only
    routed: :meth:`job_of`); new job kinds declare theirs."""

    def __init__(self) -> None:
        self._schemas: dict[str, MessageSchema] = {}
        self._raw: dict[str, str] = {}  # kind -> job, bodies checked by their own module

    def __getitem__(self, kind: str) -> MessageSchema:
        return self._schemas[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._schemas)

    def __len__(self) -> int:
        return len(self._schemas)

    def declare(
        self,
        job: str,
        vector: VectorLayout | None = None,
        *,
        run_id_if_empty: str | None = None,
    ) -> Callable[[type[M]], type[M]]:
        """Class decorator: add the message dataclass below it to the table under ``job``."""

        def add(message: type[M]) -> type[M]:
            if message.KIND in self._schemas or message.KIND in self._raw:
                raise ValueError(f"message kind '{message.KIND}' is already declared")
            self._schemas[message.KIND] = MessageSchema.of(
                message, job, vector or NoVector(), run_id_if_empty
            )
            return message

        return add

    def declare_raw(self, kind: str, job: str) -> None:
        """An envelope kind whose body its own protocol module parses and checks (the
        secure-sum steps): routed under ``job``, never decoded here."""
        if kind in self._schemas or kind in self._raw:
            raise ValueError(f"message kind '{kind}' is already declared")
        self._raw[kind] = job

    def remove(self, kind: str) -> None:
        """Withdraw a declared kind (a plug-in unloading; tests that declare a toy kind)."""
        if self._raw.pop(kind, None) is None:
            del self._schemas[kind]

    def is_raw(self, kind: str) -> bool:
        return kind in self._raw

    def job_of(self, kind: str) -> str | None:
        """The job kind ``kind`` belongs to; None if no such kind is declared."""
        schema = self._schemas.get(kind)
        return schema.job if schema is not None else self._raw.get(kind)

    def encode(self, message: WireMessage) -> Envelope:
        """The envelope for ``message``; its vector and header as its schema declares."""
        schema = self._schemas.get(message.KIND)
        if schema is None:
            raise ProtocolError(
                f"message kind '{message.KIND}' is not declared in the schema table"
            )
        values = {name: getattr(message, name) for name in schema.vector.fields}
        head: dict[str, Any] = {}
        for name, spec in schema.header:
            value = getattr(message, name)
            if spec.optional and value is None:
                continue
            if spec.only_with is not None and getattr(message, spec.only_with) is None:
                continue
            head[name] = spec.type.write(value)
        vector = schema.vector.encode(values, head)
        run_id: str = getattr(message, "run_id", "")
        if not run_id and schema.run_id_if_empty is not None:
            run_id = schema.run_id_if_empty
        round_: int = getattr(message, "round", 0)
        return Envelope.create(message.KIND, run_id, round_, head, vector)

    def decode(self, env: Envelope) -> WireMessage:
        """The typed message inside ``env``; ProtocolError for an unknown kind or a bad field."""
        env.validate()
        return self.decode_fields(env)

    def decode_fields(self, env: Envelope) -> WireMessage:
        """:meth:`decode` for an envelope already validated (its kind, run, nonce, header)."""
        schema = self._schemas.get(env.kind)
        if schema is None:
            raise ProtocolError(
                f"unknown message kind '{env.kind}' from '{env.sender or '?'}'; "
                f"known: {', '.join(sorted(self._schemas))}"
            )
        head = HeaderReader(env)
        values = schema.vector.decode(env, head)
        for name, spec in schema.header:
            if spec.optional and name not in head.raw:
                values[name] = None
            elif spec.only_with is not None and spec.only_with not in head.raw:
                continue  # the dataclass default
            else:
                values[name] = head.read(name, spec.type)
        envelope = {"run_id": env.run_id, "round": env.round, "sender": env.sender}
        values.update({name: envelope[name] for name in schema.envelope})
        build: Callable[..., WireMessage] = schema.cls
        return build(**values)


SCHEMAS = SchemaTable()
"""Every message kind of the deployment protocol (declared in :mod:`.messages`)."""
