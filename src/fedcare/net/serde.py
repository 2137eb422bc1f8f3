"""Envelope <-> protobuf frames: the only place that knows the wire format.

An :class:`~fedcare.runtime.envelope.Envelope` leaves as one ``Head`` frame followed by
its vector cut into ``Chunk`` frames of at most ``chunk_bytes`` each. The receiver's
:class:`FrameAssembler` checks the head (kind, run, nonce, JSON header, dtype, declared
size against its limit), preallocates the vector once and copies each chunk into place,
so it holds the message plus one chunk, never a list of chunks. Nothing is unpickled:
headers are JSON, vectors are raw little-endian numbers of an allowed dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.runtime.envelope import PAYLOAD_DTYPES, Envelope

DEFAULT_CHUNK_BYTES = 4 << 20  # 4 MiB: large enough to amortise per-frame cost, small to buffer
DEFAULT_MAX_VECTOR_BYTES = 8 << 30  # refuse to preallocate more than this for one message
DEFAULT_MAX_HEADER_BYTES = 1 << 20


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed in a header")


def encode_header(header: dict[str, Any]) -> str:
    return json.dumps(header, allow_nan=False, separators=(",", ":"), sort_keys=True)


def decode_header(text: str, kind: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}", parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProtocolError(f"message '{kind}': header is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(
            f"message '{kind}': header must be a JSON object, found {type(value).__name__}"
        )
    return value


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
    """Yield the frames of one envelope lazily: only the chunk being sent is copied."""
    yield pb.Frame(head=head_of(env, chunk_bytes))
    if env.vector is None or env.vector.size == 0:
        return
    raw = _little_endian(env.vector).data.cast("B")
    for offset in range(0, len(raw), chunk_bytes):
        yield pb.Frame(
            chunk=pb.Chunk(offset=offset, data=bytes(raw[offset : offset + chunk_bytes]))
        )


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


class FrameAssembler:
    """Sans-IO receiver: feed frames in arrival order, get whole envelopes back.

    Between a head and its last chunk the assembler holds exactly one preallocated
    vector. Out-of-order, overlapping, oversized or missing chunks raise
    :class:`ProtocolError` and the assembler resets, so one bad message cannot corrupt
    the next.
    """

    def __init__(
        self,
        max_vector_bytes: int = DEFAULT_MAX_VECTOR_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.max_vector_bytes = max_vector_bytes
        self.max_header_bytes = max_header_bytes
        self._head: pb.Head | None = None
        self._vector: npt.NDArray[Any] | None = None
        self._view: memoryview | None = None
        self._received = 0
        self._chunks_seen = 0

    @property
    def busy(self) -> bool:
        """True while a message's chunks are still expected."""
        return self._head is not None

    def reset(self) -> None:
        self._head, self._vector, self._view = None, None, None
        self._received = self._chunks_seen = 0

    def feed(self, frame: pb.Frame) -> Envelope | None:
        try:
            return self._feed(frame)
        except ProtocolError:
            self.reset()
            raise

    def _feed(self, frame: pb.Frame) -> Envelope | None:
        which = frame.WhichOneof("body")
        if which == "head":
            if self._head is not None:
                raise ProtocolError(
                    f"message '{frame.head.kind}' started before message '{self._head.kind}' "
                    f"finished ({self._received} bytes of its vector received)"
                )
            return self._start(frame.head)
        if which == "chunk":
            return self._add_chunk(frame.chunk)
        raise ProtocolError("received an empty frame (neither head nor chunk)")

    def _start(self, head: pb.Head) -> Envelope | None:
        if len(head.header_json) > self.max_header_bytes:
            raise ProtocolError(
                f"message '{head.kind}': header of {len(head.header_json)} bytes exceeds "
                f"the limit of {self.max_header_bytes}"
            )
        nbytes = vector_nbytes(head, self.max_vector_bytes)
        self._head = head
        if nbytes == 0:
            empty = (
                np.empty(0, dtype=np.dtype(head.dtype).newbyteorder("<")) if head.dtype else None
            )
            return self._finish(empty)
        self._vector = np.empty(int(head.length), dtype=np.dtype(head.dtype).newbyteorder("<"))
        self._view = self._vector.data.cast("B")
        return None

    def _add_chunk(self, chunk: pb.Chunk) -> Envelope | None:
        if self._head is None or self._view is None:
            raise ProtocolError("received a vector chunk with no message head before it")
        kind = self._head.kind
        if chunk.offset != self._received:
            raise ProtocolError(
                f"message '{kind}': chunk at byte offset {chunk.offset}, expected {self._received}"
            )
        end = self._received + len(chunk.data)
        if end > len(self._view) or not chunk.data:
            raise ProtocolError(
                f"message '{kind}': chunk of {len(chunk.data)} bytes at offset {chunk.offset} "
                f"does not fit a vector of {len(self._view)} bytes"
            )
        self._view[self._received : end] = chunk.data
        self._received = end
        self._chunks_seen += 1
        if self._chunks_seen > self._head.chunks or (
            self._chunks_seen == self._head.chunks and end != len(self._view)
        ):
            raise ProtocolError(
                f"message '{kind}': {self._chunks_seen} chunks carried {end} of "
                f"{len(self._view)} bytes, but {self._head.chunks} chunks were announced"
            )
        if end < len(self._view):
            return None
        if self._chunks_seen != self._head.chunks:
            raise ProtocolError(
                f"message '{kind}': vector complete after {self._chunks_seen} chunks, "
                f"but {self._head.chunks} were announced"
            )
        return self._finish(self._vector)

    def _finish(self, vector: npt.NDArray[Any] | None) -> Envelope:
        head = self._head
        if head is None:  # pragma: no cover - guarded by callers
            raise ProtocolError("no message in progress")
        self.reset()
        env = Envelope(
            kind=head.kind,
            run_id=head.run_id,
            round=int(head.round),
            nonce=bytes(head.nonce),
            header=decode_header(head.header_json, head.kind),
            vector=vector,
        )
        env.validate()
        return env


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
