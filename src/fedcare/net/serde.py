"""Envelope <-> wire frames: the only place that knows the wire format.

An :class:`~fedcare.runtime.envelope.Envelope` leaves as one ``Head`` frame followed by
its vector cut into ``Chunk`` frames of at most ``chunk_bytes`` each (``fedcare.proto``).
The transport moves frames as raw bytes: chunk frames are encoded by hand (tag, varint
length, bytes; protobuf's wire format) straight from a view of the vector, and parsed
back to a view of the received bytes, so no protobuf object and no extra copy is made
per chunk. Heads are small and go through protobuf. Anything a hand-parser does not
recognise falls back to protobuf's own parser, so any valid encoding is accepted.

The receiver's :class:`FrameAssembler` checks the head (kind, run, nonce, JSON header,
dtype, declared size against its limit) before any chunk, then either preallocates the
vector once and copies each chunk into place (it holds the message plus one chunk, never
a list of chunks), or, when its ``begin`` callback returns a :class:`ChunkSink`, hands
each chunk to the sink as whole elements and holds nothing. Nothing is unpickled:
headers are JSON, vectors are raw little-endian numbers of an allowed dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from fedcare.core.errors import ProtocolError
from fedcare.net.header_json import decode_header
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.runtime.envelope import PAYLOAD_DTYPES, Envelope

# 1 MiB: large enough to amortise per-frame cost (1, 4, 8 and 16 MiB moved the same bytes
# per second), small enough that what a receiver buffers per connected site (the chunk in
# progress plus one chunk of read-ahead) stays a small fraction of a large model.
DEFAULT_CHUNK_BYTES = 1 << 20
DEFAULT_MAX_VECTOR_BYTES = 8 << 30  # refuse to preallocate more than this for one message
DEFAULT_MAX_HEADER_BYTES = 1 << 20

# Protobuf tags (field number << 3 | wire type): Frame.head = 1 and Frame.chunk = 2 are
# length-delimited (2); Chunk.offset = 1 is a varint (0), Chunk.data = 2 length-delimited.
_FRAME_HEAD = 0x0A
_FRAME_CHUNK = 0x12
_CHUNK_OFFSET = 0x08
_CHUNK_DATA = 0x12


def encode_header(header: dict[str, Any]) -> str:
    return json.dumps(header, allow_nan=False, separators=(",", ":"), sort_keys=True)


def _little_endian(vector: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<"))


def head_of(env: Envelope, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> pb.Head:
    """The head frame's content for ``env`` (the vector's chunk count included)."""
    if chunk_bytes < 1:
        raise ProtocolError(f"chunk_bytes must be >= 1, found {chunk_bytes}")
    env.validate()
    head = pb.Head(
        kind=env.kind,
        run_id=env.run_id,
        round=env.round,
        nonce=env.nonce,
        header_json=encode_header(env.header),
    )
    if env.vector is not None:
        head.dtype = env.vector.dtype.name
        head.length = int(env.vector.size)
        head.chunks = -(-int(env.vector.nbytes) // chunk_bytes)
    return head


def envelope_frames(env: Envelope, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.Frame]:
    """The frames of one envelope as protobuf objects (the reference encoding)."""
    yield pb.Frame(head=head_of(env, chunk_bytes))
    if env.vector is None or env.vector.size == 0:
        return
    raw = _little_endian(env.vector).data.cast("B")
    for offset in range(0, len(raw), chunk_bytes):
        yield pb.Frame(
            chunk=pb.Chunk(offset=offset, data=bytes(raw[offset : offset + chunk_bytes]))
        )


# -- hand-encoded wire frames ------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None if ``buf`` holds no complete varint at ``pos``."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return None


def chunk_frame(offset: int, data: bytes | memoryview) -> bytes:
    """``Frame(chunk=Chunk(offset, data))`` on the wire, with one copy of ``data``."""
    size = len(data)
    inner = bytes((_CHUNK_OFFSET,)) + _varint(offset) + bytes((_CHUNK_DATA,)) + _varint(size)
    prefix = bytes((_FRAME_CHUNK,)) + _varint(len(inner) + size) + inner
    return b"".join((prefix, data))


def head_frame(head: pb.Head) -> bytes:
    return bytes(pb.Frame(head=head).SerializeToString())


class EncodedEnvelope:
    """One envelope ready for the wire: its head encoded, its vector viewed as bytes.

    Frames are cut lazily, one chunk at a time; the vector is not copied as a whole
    (a big-endian vector is converted once). The same object may be sent on any
    number of streams.
    """

    def __init__(self, env: Envelope, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.kind = env.kind
        self.chunk_bytes = chunk_bytes
        self.head = head_frame(head_of(env, chunk_bytes))
        vector = env.vector
        empty = vector is None or vector.size == 0
        self.raw = memoryview(b"") if empty else _little_endian(vector).data.cast("B")  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int:
        return len(self.raw)

    def frames(self) -> Iterator[bytes]:
        yield self.head
        raw, step = self.raw, self.chunk_bytes
        for offset in range(0, len(raw), step):
            yield chunk_frame(offset, raw[offset : offset + step])


def wire_frames(env: Envelope, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """The frames of one envelope as wire bytes (hand-encoded chunks)."""
    return EncodedEnvelope(env, chunk_bytes).frames()


@dataclass(frozen=True)
class ChunkView:
    """A parsed chunk frame: its byte offset and a view of its data (no copy)."""

    offset: int
    data: bytes | memoryview


def _fast_chunk(view: memoryview) -> ChunkView | None:
    """Parse the canonical chunk encoding without copying; None for anything else."""
    size = _read_varint(view, 1)
    if size is None or size[0] != len(view) - size[1]:
        return None
    pos, offset = size[1], 0
    if pos < len(view) and view[pos] == _CHUNK_OFFSET:
        read = _read_varint(view, pos + 1)
        if read is None:
            return None
        offset, pos = read
    if pos >= len(view) or view[pos] != _CHUNK_DATA:
        return None
    data = _read_varint(view, pos + 1)
    if data is None or data[1] + data[0] != len(view):
        return None
    return ChunkView(offset, view[data[1] :])


def parse_frame(message: bytes) -> pb.Head | ChunkView:
    """One wire frame: a head, or a chunk whose data is a view of ``message``."""
    view = memoryview(message)
    if len(view) > 1 and view[0] == _FRAME_CHUNK:
        chunk = _fast_chunk(view)
        if chunk is not None:
            return chunk
    try:
        frame = pb.Frame.FromString(message)
    except DecodeError as exc:
        raise ProtocolError(f"received a frame that is not valid protobuf: {exc}") from exc
    return _frame_body(frame)


def _frame_body(frame: pb.Frame) -> pb.Head | ChunkView:
    which = frame.WhichOneof("body")
    if which == "head":
        return frame.head
    if which == "chunk":
        return ChunkView(int(frame.chunk.offset), frame.chunk.data)
    raise ProtocolError("received an empty frame (neither head nor chunk)")


def vector_nbytes(head: pb.Head, max_vector_bytes: int = DEFAULT_MAX_VECTOR_BYTES) -> int:
    """Bytes the head announces, after checking dtype and the receiver's size limit."""
    if not head.dtype:
        if head.length or head.chunks:
            raise ProtocolError(
                f"message '{head.kind}': announces {head.length} elements but no dtype"
            )
        return 0
    if head.dtype not in PAYLOAD_DTYPES:
        raise ProtocolError(
            f"message '{head.kind}': vector dtype '{head.dtype}' is not one of {sorted(PAYLOAD_DTYPES)}"
        )
    nbytes = int(head.length) * np.dtype(head.dtype).itemsize
    if nbytes > max_vector_bytes:
        raise ProtocolError(
            f"message '{head.kind}': vector of {nbytes} bytes exceeds the limit of "
            f"{max_vector_bytes} bytes (raise max_vector_bytes if the model is that large)"
        )
    if (nbytes == 0) != (head.chunks == 0):
        raise ProtocolError(
            f"message '{head.kind}': {nbytes} vector bytes in {head.chunks} chunks is inconsistent"
        )
    return nbytes


# -- receiving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorHead:
    """A message whose vector is about to stream in: the envelope without its vector."""

    envelope: Envelope
    dtype: np.dtype[Any]  # little-endian
    length: int

    @property
    def nbytes(self) -> int:
        return self.length * self.dtype.itemsize


class ChunkSink(Protocol):
    """Consumes one message's vector piece by piece, in order, as it arrives.

    ``write`` gets whole elements: ``values`` (read-only, valid only during the call)
    starts at element ``index``. ``close`` follows the last piece; ``abort`` replaces it
    when the message turns out malformed or the stream breaks, so a sink never mistakes
    a partial vector for a whole one. A sink may raise to refuse the message; it is then
    aborted and the stream is cut.
    """

    def write(self, index: int, values: npt.NDArray[Any]) -> None: ...

    def close(self) -> None: ...

    def abort(self, reason: str) -> None: ...


SinkFactory = Callable[[VectorHead], ChunkSink | None]
"""Called with each head that announces a vector: a sink, or None to assemble it whole."""


class FrameAssembler:
    """Sans-IO receiver: feed frames in arrival order, get whole envelopes back.

    Between a head and its last chunk the assembler holds exactly one preallocated
    vector, or nothing at all when ``begin`` returned a sink for the message.
    Out-of-order, overlapping, oversized or missing chunks raise :class:`ProtocolError`,
    abort the sink and reset the assembler, so one bad message cannot corrupt the next.
    """

    def __init__(
        self,
        max_vector_bytes: int = DEFAULT_MAX_VECTOR_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        begin: SinkFactory | None = None,
    ) -> None:
        self.max_vector_bytes = max_vector_bytes
        self.max_header_bytes = max_header_bytes
        self._begin = begin
        self.reset()

    @property
    def busy(self) -> bool:
        """True while a message's chunks are still expected."""
        return self._head is not None

    def reset(self) -> None:
        self._head: pb.Head | None = None
        self._envelope: Envelope | None = None
        self._dtype: np.dtype[Any] = np.dtype(np.uint8)
        self._nbytes = 0
        self._vector: npt.NDArray[Any] | None = None
        self._view: memoryview | None = None
        self._sink: ChunkSink | None = None
        self._carry = bytearray()  # a partial element split across two chunks (sink only)
        self._sunk = 0  # bytes handed to the sink
        self._received = 0
        self._chunks_seen = 0

    def abort(self, reason: str) -> None:
        """Give up on the message in progress (the stream broke): abort its sink, reset."""
        sink = self._sink
        self.reset()
        if sink is not None:
            sink.abort(reason)

    def feed(self, frame: pb.Frame) -> Envelope | None:
        """Feed a protobuf frame object."""
        return self._guarded(lambda: _frame_body(frame))

    def feed_bytes(self, message: bytes) -> Envelope | None:
        """Feed one frame as received off the wire."""
        return self._guarded(lambda: parse_frame(message))

    def _guarded(self, parse: Callable[[], pb.Head | ChunkView]) -> Envelope | None:
        try:
            item = parse()
            if isinstance(item, ChunkView):
                return self._add_chunk(item.offset, item.data)
            return self._start(item)
        except BaseException as exc:
            self.abort(str(exc) or type(exc).__name__)
            raise

    def _start(self, head: pb.Head) -> Envelope | None:
        if self._head is not None:
            raise ProtocolError(
                f"message '{head.kind}' started before message '{self._head.kind}' "
                f"finished ({self._received} bytes of its vector received)"
            )
        if len(head.header_json) > self.max_header_bytes:
            raise ProtocolError(
                f"message '{head.kind}': header of {len(head.header_json)} bytes exceeds "
                f"the limit of {self.max_header_bytes}"
            )
        nbytes = vector_nbytes(head, self.max_vector_bytes)
        envelope = Envelope(
            kind=head.kind,
            run_id=head.run_id,
            round=int(head.round),
            nonce=bytes(head.nonce),
            header=decode_header(head.header_json, head.kind, self.max_header_bytes),
        )
        envelope.validate()
        self._head, self._envelope, self._nbytes = head, envelope, nbytes
        if head.dtype:
            self._dtype = np.dtype(head.dtype).newbyteorder("<")
        if nbytes == 0:
            return self._finish(np.empty(0, dtype=self._dtype) if head.dtype else None)
        if self._begin is not None:
            self._sink = self._begin(VectorHead(envelope, self._dtype, int(head.length)))
        if self._sink is None:
            self._vector = np.empty(int(head.length), dtype=self._dtype)
            self._view = self._vector.data.cast("B")
        return None

    def _add_chunk(self, offset: int, data: bytes | memoryview) -> Envelope | None:
        head = self._head
        if head is None:
            raise ProtocolError("received a vector chunk with no message head before it")
        if offset != self._received:
            raise ProtocolError(
                f"message '{head.kind}': chunk at byte offset {offset}, expected {self._received}"
            )
        end = offset + len(data)
        if end > self._nbytes or not data:
            raise ProtocolError(
                f"message '{head.kind}': chunk of {len(data)} bytes at offset {offset} "
                f"does not fit a vector of {self._nbytes} bytes"
            )
        seen = self._chunks_seen + 1
        if seen > head.chunks or (seen == head.chunks and end != self._nbytes):
            raise ProtocolError(
                f"message '{head.kind}': {seen} chunks carried {end} of "
                f"{self._nbytes} bytes, but {head.chunks} chunks were announced"
            )
        if end == self._nbytes and seen != head.chunks:
            raise ProtocolError(
                f"message '{head.kind}': vector complete after {seen} chunks, "
                f"but {head.chunks} were announced"
            )
        if self._view is not None:
            self._view[offset:end] = data
        else:
            self._to_sink(memoryview(data))
        self._received, self._chunks_seen = end, seen
        if end < self._nbytes:
            return None
        if self._sink is not None:
            sink = self._sink
            self.reset()
            sink.close()
            return None
        return self._finish(self._vector)

    def _to_sink(self, data: memoryview) -> None:
        """Hand ``data`` to the sink as whole elements, carrying a split element over."""
        itemsize = self._dtype.itemsize
        if self._carry:
            need = itemsize - len(self._carry)
            self._carry += data[:need]
            data = data[need:]
            if len(self._carry) == itemsize:
                self._emit(np.frombuffer(bytes(self._carry), dtype=self._dtype))
                self._carry.clear()
        whole = len(data) // itemsize * itemsize
        if whole:
            self._emit(np.frombuffer(data[:whole], dtype=self._dtype))
        self._carry += data[whole:]

    def _emit(self, values: npt.NDArray[Any]) -> None:
        if self._sink is None:  # pragma: no cover - guarded by callers
            raise ProtocolError("no sink for this message")
        self._sink.write(self._sunk // self._dtype.itemsize, values)
        self._sunk += values.nbytes

    def _finish(self, vector: npt.NDArray[Any] | None) -> Envelope:
        envelope = self._envelope
        if envelope is None:  # pragma: no cover - guarded by callers
            raise ProtocolError("no message in progress")
        self.reset()
        return envelope.with_vector(vector)  # its head was checked in _start


def frames_to_envelopes(
    frames: Iterator[pb.Frame], assembler: FrameAssembler | None = None
) -> Iterator[Envelope]:
    """Reassemble a frame stream into envelopes (the sender is stamped by the transport)."""
    asm = assembler or FrameAssembler()
    for frame in frames:
        env = asm.feed(frame)
        if env is not None:
            yield env
    if asm.busy:
        raise ProtocolError("stream ended in the middle of a message")
