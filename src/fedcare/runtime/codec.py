"""One codec for every protocol message: declared fields in, checked envelopes out.

A message is a frozen dataclass (a :class:`WireMessage`) whose fields say where each value
travels:

- ``run_id``, ``round`` and ``sender`` are the envelope's own (``sender`` is never read
  from the wire: the receiving transport sets it from the peer's certificate);
- a field annotated with a :class:`~.wire_fields.FieldType`
  (``attempt: Annotated[int, Integer()]``) is one JSON header field of that type, checked
  on the way in;
- the rest belong to the message's :class:`~.wire_fields.VectorLayout`, which packs them
  into the at most one vector an envelope carries.

:class:`SchemaTable` holds the declarations, kind -> :class:`MessageSchema`, each under the
job kind its messages belong to (``session``, ``train``, ``evaluate``; later kinds add
theirs); :meth:`SchemaTable.encode` and :meth:`SchemaTable.decode` are the only code that
turns messages into envelopes and back. Every refusal names the message, the sender and
the field, and says what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, cast, get_type_hints

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.wire_fields import FieldType, HeaderField, HeaderReader, NoVector, VectorLayout

ENVELOPE_FIELDS = ("run_id", "round", "sender")


def _header_field(hint: Any) -> HeaderField | None:
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, HeaderField):
            return meta
        if isinstance(meta, FieldType):
            return HeaderField(meta)
    return None


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
