"""A site's update taken chunk by chunk as it arrives, and the round's mean folded from them.

The coordinator never holds a site's whole update. The transport hands each chunk to an
:class:`UpdateIntake`, which hashes it (the announced hash is checked on the bytes as
sent), accumulates each segment's sum of squares, notes the first non-finite value, and
passes the chunk on to a :class:`ChunkStore` the driver supplies (a scratch file at the
coordinator, :mod:`fedcare.net.update_spool`; in memory for small updates and in tests).
When the last chunk is in, the machine validates the update from those figures before it
touches the aggregate, exactly as it validates a whole one, and a rejected update is
dropped without ever having been summed.

At the round's end :func:`fold_mean` computes the weighted mean block by block over the
accepted updates, in the order they were accepted: each block is a
:class:`~fedcare.algorithms.aggregate.StreamingMean` of the same values in the same order,
so the result is bit for bit what one StreamingMean over the whole updates gives, while the
coordinator holds the model, the float32 mean and one block per update, never a
model-sized float64 sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.algorithms.aggregate import Aggregate, StreamingMean
from fedcare.core.errors import ProtocolError
from fedcare.core.records import ClientUpdate
from fedcare.core.vectors import FloatVector
from fedcare.rounds import RoundAggregate
from fedcare.rounds.aggregators import AddsEach
from fedcare.runtime.validation import squared_norm
from fedcare.runtime.wire_fields import MismatchError, SegmentList

FOLD_BLOCK = 1 << 20  # values per block when folding: 8 MB of float64 per block


class ChunkStore(Protocol):
    """Where an update's values wait between their arrival and the round's end."""

    def write(self, index: int, values: npt.NDArray[np.float32]) -> None: ...

    def read(self, start: int, stop: int) -> npt.NDArray[np.float32]: ...

    def discard(self) -> None: ...


class MemoryChunks:
    """A :class:`ChunkStore` in memory, for updates of a few chunks at most."""

    def __init__(self, size: int) -> None:
        self.values: npt.NDArray[np.float32] = np.empty(size, np.float32)

    def write(self, index: int, values: npt.NDArray[np.float32]) -> None:
        self.values[index : index + values.size] = values

    def read(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        return self.values[start:stop]

    def discard(self) -> None:
        self.values = np.empty(0, np.float32)


class SegmentSource(Protocol):
    """An accepted update as the fold reads it: values ``start:stop`` of a segment."""

    def read(self, name: str, start: int, stop: int) -> npt.NDArray[np.float32]: ...

    def discard(self) -> None: ...


@dataclass
class WholeUpdate:
    """An update that arrived whole (in-process drivers, tests), kept as it came."""

    arrays: dict[str, FloatVector]

    def read(self, name: str, start: int, stop: int) -> npt.NDArray[np.float32]:
        return self.arrays[name][start:stop]

    def discard(self) -> None:
        self.arrays = {}


def segments_of(header: dict[str, Any], length: int) -> list[tuple[str, int]] | None:
    """The ``segments`` of an update's header, if they are names and sizes tiling
    ``length`` values (None otherwise: the update is then parsed whole and refused with
    the parser's own message)."""
    try:
        segments = SegmentList().read(header.get("segments"))
    except MismatchError:
        return None
    return segments if sum(n for _, n in segments) == length else None


@dataclass
class UpdateIntake:
    """One update's vector as it streams in (a ``ChunkSink`` for the transport).

    ``segments`` is the update's layout from its header (delta, then any extras).
    Chunks must arrive in order and tile the vector; the transport guarantees it and the
    intake refuses anything else (the stream is then cut as malformed).
    """

    segments: list[tuple[str, int]]
    store: ChunkStore
    received: int = 0
    aborted: str = ""
    closed: bool = False
    non_finite: str = ""  # the first non-finite value found (squared_norm's message)
    squares: dict[str, float] = field(default_factory=dict)  # sum of squares per segment
    _hash: Any = field(default_factory=hashlib.sha256)
    _bounds: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = 0
        for name, size in self.segments:
            self._bounds[name] = (start, start + size)
            self.squares[name] = 0.0
            start += size

    @property
    def size(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def digest(self) -> str:
        """sha256 of the vector's bytes as sent (what ``vector_digest`` gives whole)."""
        return str(self._hash.hexdigest())

    def write(self, index: int, values: npt.NDArray[Any]) -> None:
        if values.dtype != np.float32 or index != self.received:
            raise ProtocolError(
                f"update chunk at {index} ({values.dtype}): expected float32 values from "
                f"{self.received}"
            )
        if index + values.size > self.size:
            raise ProtocolError(
                f"update chunk of {values.size} at {index} overruns its {self.size} values"
            )
        self._hash.update(np.ascontiguousarray(values).view(np.uint8).data)
        for name, (lo, hi) in self._bounds.items():
            a, b = max(lo, index), min(hi, index + values.size)
            if a < b:
                self._observe(name, a - lo, values[a - index : b - index])
        self.store.write(index, values)
        self.received += values.size

    def _observe(self, name: str, offset: int, values: npt.NDArray[np.float32]) -> None:
        try:
            self.squares[name] += squared_norm(values, name, offset)
        except ValueError as exc:  # the update is refused for the first one found
            self.non_finite = self.non_finite or str(exc)

    def close(self) -> None:
        if self.received != self.size:
            raise ProtocolError(f"update ended after {self.received} of {self.size} values")
        self.closed = True

    def abort(self, reason: str) -> None:
        self.aborted = reason or "aborted"
        self.store.discard()

    def read(self, name: str, start: int, stop: int) -> npt.NDArray[np.float32]:
        lo, _ = self._bounds[name]
        return self.store.read(lo + start, lo + stop)

    def discard(self) -> None:
        self.store.discard()


def fold_mean(
    size: int,
    updates: Sequence[tuple[SegmentSource, float]],
    extras: dict[str, int],
    block: int = FOLD_BLOCK,
) -> Aggregate:
    """The weighted mean of the deltas and the uniform means of the extras, block by block
    in the order given: bit for bit :class:`StreamingMean` over the same updates."""
    if not updates:
        raise ValueError("no update with positive weight was aggregated this round")
    delta = _fold(size, "delta", updates, block, weighted=True)
    means = {name: _fold(n, name, updates, block, weighted=False) for name, n in extras.items()}
    weight = 0.0
    for _, w in updates:  # summed in the same order as StreamingMean sums it
        weight += float(w)
    return Aggregate(delta=delta, extras=means, total_weight=weight, count=len(updates))


def _fold(
    size: int,
    name: str,
    updates: Sequence[tuple[SegmentSource, float]],
    block: int,
    *,
    weighted: bool,
) -> npt.NDArray[np.float32]:
    """One segment's mean, block by block: the delta weighted (StreamingMean's sum), an
    extra uniform (StreamingMean's float64 sum over the count)."""
    out = np.empty(size, np.float32)
    for start in range(0, size, block):
        stop = min(size, start + block)
        if weighted:
            acc = StreamingMean(stop - start)
            for source, weight in updates:
                acc.add(source.read(name, start, stop), weight)
            out[start:stop] = acc.result().delta
        else:
            total = np.zeros(stop - start, np.float64)
            for source, _ in updates:
                total += source.read(name, start, stop)
            out[start:stop] = (total / len(updates)).astype(np.float32)
    return out


@dataclass
class FoldedMean(AddsEach):
    """The round core's plain mean (:class:`~fedcare.rounds.MeanAggregator`) for a
    coordinator that keeps updates where they arrived and folds them at the round's end.

    ``add_source`` takes an accepted update kept elsewhere (an intake's scratch file);
    ``add`` a whole one. ``result`` is bit for bit the MeanAggregator's over the same
    updates in the same order, without ever holding a model-sized float64 sum.
    """

    size: int
    extras: dict[str, int]
    sources: list[tuple[SegmentSource, float]] = field(default_factory=list)

    def add_source(self, source: SegmentSource, weight: float) -> None:
        self.sources.append((source, float(weight)))

    def add(self, update: ClientUpdate, site: int) -> None:
        self.add_source(WholeUpdate({"delta": update.delta, **update.extras}), update.weight)

    def open(  # its sink folds the update where it arrived; the base buffers it
        self, site: int, weight: float, extras: Mapping[str, FloatVector] | None = None
    ) -> _FoldSink:
        intake = UpdateIntake([("delta", self.size)], MemoryChunks(self.size))
        return _FoldSink(self, intake, weight)

    def empty(self) -> FoldedMean:
        return FoldedMean(self.size, dict(self.extras))

    def merge(self, other: object) -> None:
        if not isinstance(other, FoldedMean):
            raise TypeError(f"cannot merge a {type(other).__name__} into a FoldedMean")
        self.sources.extend(other.sources)

    def result(self) -> RoundAggregate:
        return RoundAggregate(fold_mean(self.size, self.sources, self.extras))

    def release(self) -> None:
        """Let go of the kept updates (their scratch files, if any)."""
        for source, _ in self.sources:
            source.discard()
        self.sources = []


@dataclass
class _FoldSink:
    target: FoldedMean
    intake: UpdateIntake
    weight: float

    def add_chunk(self, offset: int, values: FloatVector) -> None:
        self.intake.write(offset, values)

    def commit(self) -> None:
        self.intake.close()
        self.target.add_source(self.intake, self.weight)
