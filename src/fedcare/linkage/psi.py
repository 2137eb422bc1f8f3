"""Diffie-Hellman private set intersection for two or more parties, as sans-IO state machines.

Each party p holds a secret key k_p and its keyed hashes H(x). An *owner*'s set leaves it
blinded by its own key and visits every other party once, each multiplying by its key; the
label party (``config.parties[0]``) applies its key last or, for its own set, first. Once
every set is blinded by all keys, the label party compares: blinding commutes, so two
parties' elements are equal exactly when their identifiers are. Routes (label party L):

* L's own set: L -> P1 -> ... -> Pn -> L, in L's row order (cardinality mode: Pn sorts it
  before returning it, so L cannot tell which of its rows matched).
* Pj's set: Pj sorts its blinded set (a random permutation only Pj can undo), then
  Pj -> P(j+1) ... Pn, P1 ... P(j-1) -> L, order kept.

Modes: ``label`` (L learns which of its rows are shared), ``all`` (L also sends each party
the positions of the shared patients in that party's sent list, in a joint order sorted by
the fully blinded value, so every party ends with its own rows of the joined table in the
same order), ``cardinality`` (L learns, then tells everyone, only the number shared).
What each party learns is in docs/linkage.md. Everything is streamed in ``batch_size``
element batches; a party holds its own set and, at L, 16 bytes per element of every set.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcare.core.errors import ConfigError, DataValidationError, ProtocolError
from fedcare.linkage import matching
from fedcare.linkage.group import ELEMENT_BYTES, blind, check_elements, new_key
from fedcare.linkage.identifiers import DEFAULT_BATCH, KeyedIdentifiers
from fedcare.linkage.messages import ElementBatch, IntersectionSize, MatchPositions, PsiMessage

Mode = Literal["label", "all", "cardinality"]
MODES: tuple[Mode, ...] = ("label", "all", "cardinality")


@dataclass(frozen=True)
class PsiConfig:
    """Who links (label party first), what is revealed, and the batch size on the wire."""

    parties: tuple[str, ...]
    mode: Mode = "label"
    batch_size: int = DEFAULT_BATCH

    def __post_init__(self) -> None:
        if len(self.parties) < 2:
            raise ConfigError(f"PSI: at least two parties are needed, found {list(self.parties)}")
        if len(set(self.parties)) != len(self.parties) or not all(self.parties):
            raise ConfigError(
                f"PSI: party names must be distinct and non-empty, found {list(self.parties)}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"PSI: mode must be one of {list(MODES)}, found {self.mode!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(
                f"PSI: batch_size must be a positive integer, found {self.batch_size!r}"
            )

    @property
    def label(self) -> str:
        return self.parties[0]

    def route(self, owner: str) -> tuple[str, ...]:
        """The parties ``owner``'s set visits after leaving it; the label party is last."""
        if owner == self.label:
            return (*self.parties[1:], self.label)
        j = self.parties.index(owner)
        return (*self.parties[j + 1 :], *self.parties[1:j], self.label)

    def previous(self, owner: str, me: str) -> str:
        hops = (owner, *self.route(owner))
        return hops[hops.index(me, 1) - 1]


@dataclass(frozen=True)
class PsiResult:
    """What one party learned.

    ``size``: patients held by every party (None where the mode hides it from this party).
    ``rows``: this party's rows of the joined table, in the joint order (None where not
    revealed). ``set_sizes``: the set sizes this party saw pass through it.
    """

    party: str
    mode: Mode
    size: int | None
    rows: npt.NDArray[np.int64] | None
    set_sizes: dict[str, int] = field(default_factory=dict)


class PsiState(enum.Enum):
    READY = "ready"  # constructed; may already relay others' sets
    RUNNING = "running"  # own set sent or being sent, streams in flight
    FINISHED = "finished"  # result available


@dataclass
class _Stream:
    """One owner's set arriving here: next batch number, elements so far, done."""

    next_seq: int = 0
    count: int = 0
    done: bool = False
    parts: list[npt.NDArray[np.uint64]] = field(default_factory=list)  # label party only
    buffer: list[bytes] = field(default_factory=list)  # cardinality mode's last hop only


class PsiParty:
    """One party's half of the PSI: ``start()`` and ``receive(message)`` yield messages out."""

    def __init__(
        self,
        config: PsiConfig,
        me: str,
        inputs: KeyedIdentifiers,
        key: X25519PrivateKey | None = None,
    ) -> None:
        if me not in config.parties:
            raise ConfigError(f"PSI: {me!r} is not one of the parties {list(config.parties)}")
        if inputs.party != me:
            raise ConfigError(f"PSI: party {me!r} was given {inputs.party!r}'s identifiers")
        self.config = config
        self.me = me
        # Keyed hashes are only needed to send the own set; dropped once it is sent, so a
        # caller that lets go of its KeyedIdentifiers gets the memory back for the compare.
        self._keys: npt.NDArray[np.uint8] | None = inputs.keys
        self._num_rows = inputs.num_rows
        self._key = key if key is not None else new_key()
        self.state = PsiState.READY
        self._streams = {owner: _Stream() for owner in config.parties if owner != me}
        if me == config.label:
            self._streams[me] = _Stream()  # the label party's own set comes back to it
        self._sent_rows: npt.NDArray[np.int64] | None = None  # rows in the order sent
        self._own_sent = False
        self._result: PsiResult | None = None

    @property
    def is_label(self) -> bool:
        return self.me == self.config.label

    @property
    def result(self) -> PsiResult:
        if self._result is None:
            raise ProtocolError(f"PSI party {self.me!r}: no result yet (state {self.state.value})")
        if self._result.size == 0:
            raise DataValidationError(
                "no patient is held by every party; check that all use the same identifier "
                "rules and study secret",
                site=self.me,
                expected="at least one shared identifier",
                found=f"0 shared among {list(self.config.parties)}",
            )
        return self._result

    # -- sending one's own set ---------------------------------------------------------------

    def start(self) -> Iterator[PsiMessage]:
        """Blind and send this party's own set, batch by batch."""
        if self.state is not PsiState.READY:
            raise ProtocolError(
                f"PSI party {self.me!r}: start() called in state {self.state.value}"
            )
        self.state = PsiState.RUNNING
        keys = self._keys
        if keys is None:  # unreachable: start() runs once (READY is checked above)
            raise ProtocolError(f"PSI party {self.me!r}: own set already sent")
        step = self.config.batch_size
        first = self.config.route(self.me)[0]
        if self.is_label:
            # Row order: the label party maps the returned elements back to its rows.
            self._sent_rows = np.arange(len(keys), dtype=np.int64)
            for seq, start in enumerate(range(0, len(keys), step)):
                blob = blind(keys[start : start + step].tobytes(), self._key, sender=self.me)
                yield ElementBatch(self.me, first, self.me, seq, start + step >= len(keys), blob)
            self._own_sent, self._keys = True, None
            return
        # Filled in place, batch by batch: one (rows, 32) array, no list of batch copies.
        blinded = np.empty((len(keys), ELEMENT_BYTES), dtype=np.uint8)
        for start in range(0, len(keys), step):
            blob = blind(keys[start : start + step].tobytes(), self._key, sender=self.me)
            blinded[start : start + step] = np.frombuffer(blob, dtype=np.uint8).reshape(
                -1, ELEMENT_BYTES
            )
        # Sorted by blinded value: a uniformly random order, unlinkable to the table's rows.
        order = matching.sort_order(matching.keys_from_blinded(blinded))
        self._sent_rows = order.astype(np.int64)
        for seq, start in enumerate(range(0, len(order), step)):
            chunk = blinded[order[start : start + step]].tobytes()
            yield ElementBatch(self.me, first, self.me, seq, start + step >= len(order), chunk)
        self._own_sent, self._keys = True, None
        del blinded
        yield from self._maybe_finish()

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, message: PsiMessage) -> Iterator[PsiMessage]:
        if message.recipient != self.me:
            raise ProtocolError(f"PSI party {self.me!r}: got a message for {message.recipient!r}")
        if self.state is PsiState.FINISHED:
            raise ProtocolError(
                f"PSI party {self.me!r}: {type(message).__name__} from {message.sender!r} in "
                f"state {self.state.value}"
            )
        if isinstance(message, ElementBatch):
            yield from self._on_elements(message)
        elif isinstance(message, MatchPositions):
            self._on_positions(message)
        else:
            self._on_size(message)
        yield from self._maybe_finish()

    def _stream_for(self, message: ElementBatch) -> _Stream:
        stream = self._streams.get(message.owner)
        expected = self.config.previous(message.owner, self.me) if stream is not None else None
        if stream is None or message.sender != expected:
            raise ProtocolError(
                f"PSI party {self.me!r}: {message.sender!r} may not send {message.owner!r}'s set "
                f"here (expected from {expected!r})"
            )
        if stream.done or message.seq != stream.next_seq:
            raise ProtocolError(
                f"PSI party {self.me!r}: batch {message.seq} of {message.owner!r}'s set out of "
                f"order (expected {'none, the set is complete' if stream.done else stream.next_seq})"
            )
        stream.next_seq += 1
        stream.count += check_elements(message.elements, sender=message.sender)
        stream.done = message.last
        return stream

    def _on_elements(self, message: ElementBatch) -> Iterator[PsiMessage]:
        stream = self._stream_for(message)
        owner = message.owner
        if self.is_label:
            # Own set: already blinded by everyone. Another's: this key is the last one.
            final = (
                message.elements
                if owner == self.me
                else blind(message.elements, self._key, sender=message.sender)
            )
            stream.parts.append(matching.keys_from_elements(final))
            if stream.done and owner == self.me and stream.count != self._num_rows:
                raise ProtocolError(
                    f"PSI party {self.me!r}: {stream.count} of its {self._num_rows} "
                    f"elements came back from {message.sender!r}"
                )
            return
        blob = blind(message.elements, self._key, sender=message.sender)
        route = self.config.route(owner)
        onward = route[route.index(self.me) + 1]
        if (
            self.config.mode == "cardinality"
            and owner == self.config.label
            and onward == self.config.label
        ):
            stream.buffer.append(blob)
            if stream.done:  # shuffle (sort) the label party's set before it goes back
                elements = np.frombuffer(b"".join(stream.buffer), dtype=np.uint8).reshape(
                    -1, ELEMENT_BYTES
                )
                stream.buffer.clear()
                order = matching.sort_order(matching.keys_from_blinded(elements))
                step = self.config.batch_size
                for seq, start in enumerate(range(0, len(elements), step)):
                    chunk = elements[order[start : start + step]].tobytes()
                    yield ElementBatch(
                        self.me, onward, owner, seq, start + step >= len(elements), chunk
                    )
            return
        yield ElementBatch(self.me, onward, owner, message.seq, message.last, blob)

    def _on_positions(self, message: MatchPositions) -> None:
        if self.is_label or self.config.mode != "all" or message.sender != self.config.label:
            raise ProtocolError(
                f"PSI party {self.me!r}: unexpected match positions from {message.sender!r} "
                f"(mode {self.config.mode})"
            )
        positions = message.positions
        if self._sent_rows is None:
            raise ProtocolError(
                f"PSI party {self.me!r}: match positions from {message.sender!r} before its own "
                "set was sent"
            )
        n = len(self._sent_rows)
        if len(positions) and (
            positions.min() < 0
            or positions.max() >= n
            or len(np.unique(positions)) != len(positions)
        ):
            raise ProtocolError(
                f"PSI party {self.me!r}: match positions from {message.sender!r} must be distinct "
                f"and in 0..{n - 1}"
            )
        self._finish(size=len(positions), rows=self._sent_rows[positions])

    def _on_size(self, message: IntersectionSize) -> None:
        if (
            self.is_label
            or self.config.mode != "cardinality"
            or message.sender != self.config.label
        ):
            raise ProtocolError(
                f"PSI party {self.me!r}: unexpected intersection size from {message.sender!r} "
                f"(mode {self.config.mode})"
            )
        self._finish(size=message.count, rows=None)

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, size: int | None, rows: npt.NDArray[np.int64] | None) -> None:
        sizes = {owner: s.count for owner, s in self._streams.items() if owner != self.me}
        sizes[self.me] = self._num_rows
        self._result = PsiResult(self.me, self.config.mode, size, rows, sizes)
        self.state = PsiState.FINISHED

    def _maybe_finish(self) -> Iterator[PsiMessage]:
        if self.state is not PsiState.RUNNING or not self._own_sent:
            return
        if not all(s.done for s in self._streams.values()):
            return
        if not self.is_label:
            if self.config.mode == "label":
                self._finish(size=None, rows=None)
            return  # "all" and "cardinality" wait for the label party's answer
        yield from self._compare()

    def _gather(self, owner: str) -> matching.Keys:
        parts = self._streams[owner].parts
        keys = np.concatenate(parts) if parts else np.zeros((0, matching.KEY_WORDS), np.uint64)
        parts.clear()  # one copy of each set, not two, while comparing
        return keys

    def _compare(self) -> Iterator[PsiMessage]:
        own = self._gather(self.me)
        others = {o: self._gather(o) for o in self._streams if o != self.me}
        shared = np.ones(len(own), dtype=bool)
        for keys in others.values():
            shared &= matching.isin(own, keys)
        mode = self.config.mode
        if mode == "cardinality":
            count = int(shared.sum())
            for other in others:
                yield IntersectionSize(self.me, other, count)
            self._finish(size=count, rows=None)
            return
        rows = np.flatnonzero(shared)
        rows = rows[matching.sort_order(own[rows])]  # the joint order: by fully blinded value
        if mode == "all":
            joint = own[rows]
            for other, keys in others.items():
                matched = np.flatnonzero(matching.isin(keys, joint))
                positions = matched[matching.sort_order(keys[matched])]
                yield MatchPositions(self.me, other, positions.astype(np.int64))
        self._finish(size=len(rows), rows=rows.astype(np.int64))
