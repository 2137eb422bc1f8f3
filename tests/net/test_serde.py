"""Envelope <-> protobuf frames: round trips, chunking, and refusal of malformed streams."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError, UpdateRejectedError
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.net.serde import (
    ChunkView,
    EncodedEnvelope,
    FrameAssembler,
    VectorHead,
    chunk_frame,
    envelope_frames,
    frames_to_envelopes,
    head_of,
    parse_frame,
    wire_frames,
)
from fedcare.runtime.envelope import PAYLOAD_DTYPES, Envelope


def roundtrip(env: Envelope, chunk_bytes: int) -> Envelope:
    (out,) = list(frames_to_envelopes(envelope_frames(env, chunk_bytes)))
    return out


def wire(frames: list[pb.Frame]) -> list[pb.Frame]:
    """What the peer parses: every frame serialised and parsed again."""
    return [pb.Frame.FromString(f.SerializeToString()) for f in frames]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(sorted(PAYLOAD_DTYPES)),
    length=st.integers(0, 3000),
    chunk_bytes=st.integers(1, 5000),
    round_=st.integers(0, 2**40),
    header=st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8), max_size=4
    ),
)
def test_any_envelope_survives_the_wire_whatever_the_chunk_size(
    dtype: str, length: int, chunk_bytes: int, round_: int, header: dict
) -> None:
    vector = (np.arange(length) * 7 % 251).astype(dtype)
    env = Envelope.create("update", "run-1", round_, header, vector)
    frames = wire(list(envelope_frames(env, chunk_bytes)))
    assert len(frames) == 1 + -(-vector.nbytes // chunk_bytes)
    (out,) = list(frames_to_envelopes(iter(frames)))
    assert (out.kind, out.run_id, out.round, out.nonce, out.header) == (
        env.kind,
        env.run_id,
        env.round,
        env.nonce,
        env.header,
    )
    assert out.vector is not None
    assert out.vector.dtype == vector.dtype
    np.testing.assert_array_equal(out.vector, vector)


def test_envelope_without_vector_is_one_frame() -> None:
    env = Envelope.create("hello", "run-1", 0, {"rows": 199})
    frames = list(envelope_frames(env))
    assert len(frames) == 1
    out = roundtrip(env, 16)
    assert out.vector is None
    assert out.header == {"rows": 199}


def test_sender_is_never_taken_from_the_wire() -> None:
    env = Envelope.create("update", "run-1", 3).from_peer("cleveland")
    assert roundtrip(env, 8).sender == ""


def test_several_messages_in_one_stream_come_out_in_order() -> None:
    envs = [
        Envelope.create("train", "r", i, {"i": i}, np.full(10 + i, i, np.float32)) for i in range(5)
    ]
    frames = [f for e in envs for f in envelope_frames(e, 12)]
    outs = list(frames_to_envelopes(iter(wire(frames))))
    assert [o.header["i"] for o in outs] == list(range(5))
    assert all(o.vector is not None and o.vector.size == 10 + i for i, o in enumerate(outs))


def test_big_endian_input_arrives_with_the_same_values() -> None:
    vector = np.linspace(-1, 1, 33).astype(">f4")
    env = Envelope("update", "r", 0, b"n" * 16, {}, vector)
    out = roundtrip(env, 10)
    assert out.vector is not None
    np.testing.assert_array_equal(out.vector, vector.astype(np.float32))


def test_assembler_holds_one_preallocated_vector_not_a_list_of_chunks() -> None:
    vector = np.arange(1000, dtype=np.float32)
    frames = wire(list(envelope_frames(Envelope.create("u", "r", 0, vector=vector), 400)))
    asm = FrameAssembler()
    assert asm.feed(frames[0]) is None
    target = asm._vector  # the buffer the chunks are copied into
    assert target is not None and target.nbytes == vector.nbytes
    for frame in frames[1:-1]:
        assert asm.feed(frame) is None
        assert asm.busy
    out = asm.feed(frames[-1])
    assert out is not None and out.vector is target
    assert not asm.busy


def _frames(n: int = 100, chunk: int = 100) -> list[pb.Frame]:
    env = Envelope.create("update", "r", 1, vector=np.ones(n, np.float32))
    return wire(list(envelope_frames(env, chunk)))


def feed_all(frames: list[pb.Frame], asm: FrameAssembler | None = None) -> list[Envelope]:
    return list(frames_to_envelopes(iter(frames), asm))


def test_out_of_order_chunks_are_refused() -> None:
    frames = _frames()
    frames[1], frames[2] = frames[2], frames[1]
    with pytest.raises(ProtocolError, match="offset 100, expected 0"):
        feed_all(frames)


def test_missing_chunk_is_refused_when_the_next_message_starts() -> None:
    frames = _frames()
    del frames[2]
    with pytest.raises(ProtocolError, match="expected 100"):
        feed_all(frames)
    with pytest.raises(ProtocolError, match="ended in the middle"):
        feed_all(_frames()[:-1])
    with pytest.raises(ProtocolError, match="started before message"):
        feed_all(_frames()[:-1] + _frames())


def test_chunk_beyond_the_announced_size_is_refused() -> None:
    frames = _frames()
    frames[-1].chunk.data += b"\0\0\0\0"
    with pytest.raises(ProtocolError, match="does not fit"):
        feed_all(frames)


def test_chunk_count_must_match_the_head() -> None:
    frames = _frames()
    frames[0].head.chunks = 3
    with pytest.raises(ProtocolError, match="but 3 chunks were announced"):
        feed_all(frames)
    frames = _frames()
    frames[0].head.chunks = 5
    with pytest.raises(ProtocolError, match="after 4 chunks, but 5 were announced"):
        feed_all(frames)


def test_chunk_without_head_is_refused_and_assembler_recovers() -> None:
    asm = FrameAssembler()
    frames = _frames()
    with pytest.raises(ProtocolError, match="no message head"):
        asm.feed(frames[1])
    assert len(feed_all(frames, asm)) == 1


def test_oversized_vector_is_refused_before_allocating() -> None:
    head = pb.Head(
        kind="update", run_id="r", nonce=b"n" * 16, dtype="float32", length=10**12, chunks=1
    )
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameAssembler(max_vector_bytes=1 << 30).feed(pb.Frame(head=head))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("dtype", "object", "not one of"),
        ("dtype", "float16", "not one of"),
        ("header_json", "[1, 2]", "JSON object"),
        ("header_json", '{"x": NaN}', "not valid JSON"),
        ("header_json", "{oops", "not valid JSON"),
        ("nonce", b"short", "nonce must be 16 bytes"),
        ("run_id", "", "empty run_id"),
        ("kind", "drop table", "identifier"),
    ],
)
def test_malformed_heads_are_refused(field: str, value: object, match: str) -> None:
    head = head_of(Envelope.create("update", "r", 0, vector=np.ones(4, np.float32)), 1 << 20)
    setattr(head, field, value)
    frames = [pb.Frame(head=head), pb.Frame(chunk=pb.Chunk(offset=0, data=b"\0" * 16))]
    with pytest.raises(ProtocolError, match=match):
        feed_all(frames)


def test_no_frame_exceeds_the_chunk_size_plus_the_head() -> None:
    env = Envelope.create("update", "r", 0, {"k": "v"}, np.zeros(250_000, np.float32))
    sizes = [f.ByteSize() for f in envelope_frames(env, 64 << 10)]
    assert max(sizes[1:]) <= (64 << 10) + 16
    assert sum(sizes) >= env.nbytes


# -- hand-encoded wire frames --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, 2**63 - 1), data=st.binary(min_size=1, max_size=3000))
def test_hand_encoded_chunk_frames_are_what_protobuf_parses(offset: int, data: bytes) -> None:
    wire_bytes = chunk_frame(offset, memoryview(data))
    parsed = pb.Frame.FromString(wire_bytes)
    assert parsed.WhichOneof("body") == "chunk"
    assert (parsed.chunk.offset, parsed.chunk.data) == (offset, data)
    # ...and protobuf's own encoding (which omits offset 0) parses to the same chunk by hand.
    ours = parse_frame(pb.Frame(chunk=pb.Chunk(offset=offset, data=data)).SerializeToString())
    assert isinstance(ours, ChunkView)
    assert (ours.offset, bytes(ours.data)) == (offset, data)


def test_parsed_chunk_is_a_view_of_the_received_bytes_not_a_copy() -> None:
    message = chunk_frame(4096, b"\x01" * 1000)
    chunk = parse_frame(message)
    assert isinstance(chunk, ChunkView) and isinstance(chunk.data, memoryview)
    assert chunk.data.obj is message


def test_valid_protobuf_in_an_unusual_field_order_still_parses() -> None:
    # Chunk{data, offset} (fields reversed) and an unknown field: the fast path declines,
    # protobuf's parser takes over.
    inner = b"\x12\x03abc" + b"\x08\x07" + b"\x18\x01"
    message = b"\x12" + bytes([len(inner)]) + inner
    chunk = parse_frame(message)
    assert isinstance(chunk, ChunkView)
    assert (chunk.offset, bytes(chunk.data)) == (7, b"abc")


def test_garbage_and_empty_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="not valid protobuf"):
        parse_frame(b"\x12\xff\xff\xff")
    with pytest.raises(ProtocolError, match="empty frame"):
        parse_frame(b"")


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(sorted(PAYLOAD_DTYPES)),
    length=st.integers(0, 2000),
    chunk_bytes=st.integers(1, 3000),
)
def test_wire_frames_round_trip_through_bytes_and_match_the_protobuf_frames(
    dtype: str, length: int, chunk_bytes: int
) -> None:
    vector = (np.arange(length) * 3 % 127).astype(dtype)
    env = Envelope.create("update", "run-1", 5, {"n": length}, vector)
    raw = list(wire_frames(env, chunk_bytes))
    assert [pb.Frame.FromString(m) for m in raw] == list(envelope_frames(env, chunk_bytes))
    asm = FrameAssembler()
    outs = [out for m in raw if (out := asm.feed_bytes(m)) is not None]
    assert len(outs) == 1 and not asm.busy
    assert outs[0].vector is not None and outs[0].header == {"n": length}
    np.testing.assert_array_equal(outs[0].vector, vector)


def test_one_encoded_envelope_can_be_sent_many_times() -> None:
    env = Envelope.create("train", "r", 0, vector=np.arange(100, dtype=np.float32))
    encoded = EncodedEnvelope(env, 64)
    assert list(encoded.frames()) == list(encoded.frames())
    assert encoded.nbytes == 400


# -- chunk sinks ---------------------------------------------------------------------------


@dataclass
class Collecting:
    """A sink that records what it is given (copies: the views are only valid in the call)."""

    head: VectorHead
    pieces: list[tuple[int, np.ndarray]] = field(default_factory=list)
    closed: int = 0
    aborted: list[str] = field(default_factory=list)
    fail_at: int | None = None

    def write(self, index: int, values: np.ndarray) -> None:
        if self.fail_at is not None and len(self.pieces) == self.fail_at:
            raise UpdateRejectedError(f"refused the piece at element {index}")
        assert not values.flags.writeable  # a view of the received bytes, read-only
        self.pieces.append((index, values.copy()))

    def close(self) -> None:
        self.closed += 1

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)

    def vector(self) -> np.ndarray:
        out = np.empty(self.head.length, self.head.dtype)
        for index, values in self.pieces:
            out[index : index + values.size] = values
        return out


def sinking(sinks: list[Collecting], **kwargs: object) -> FrameAssembler:
    def begin(head: VectorHead) -> Collecting:
        sinks.append(Collecting(head, **kwargs))  # type: ignore[arg-type]
        return sinks[-1]

    return FrameAssembler(begin=begin)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(sorted(PAYLOAD_DTYPES)),
    length=st.integers(1, 1500),
    chunk_bytes=st.integers(1, 700),
)
def test_a_sink_gets_whole_elements_in_order_even_when_chunks_split_them(
    dtype: str, length: int, chunk_bytes: int
) -> None:
    vector = (np.arange(length) * 11 % 101).astype(dtype)
    env = Envelope.create("update", "run-1", 1, {"w": 2}, vector)
    sinks: list[Collecting] = []
    asm = sinking(sinks)
    assert all(asm.feed_bytes(m) is None for m in wire_frames(env, chunk_bytes))
    (sink,) = sinks
    assert sink.head.envelope.header == {"w": 2} and sink.head.envelope.vector is None
    assert (sink.closed, sink.aborted) == (1, [])
    expected_index = 0
    for index, values in sink.pieces:  # contiguous, no gaps, no overlaps
        assert index == expected_index
        expected_index += values.size
    np.testing.assert_array_equal(sink.vector(), vector)
    assert not asm.busy


def test_a_bad_chunk_aborts_the_sink_and_the_next_message_is_unaffected() -> None:
    sinks: list[Collecting] = []
    asm = sinking(sinks)
    frames = list(wire_frames(Envelope.create("u", "r", 0, vector=np.ones(100, np.float32)), 64))
    asm.feed_bytes(frames[0])
    asm.feed_bytes(frames[1])
    with pytest.raises(ProtocolError, match="offset 128, expected 64"):
        asm.feed_bytes(frames[2 + 1])  # one chunk skipped
    assert sinks[0].closed == 0
    assert len(sinks[0].aborted) == 1 and "expected 64" in sinks[0].aborted[0]
    assert not asm.busy
    assert all(asm.feed_bytes(m) is None for m in frames)
    assert sinks[1].closed == 1 and sinks[1].aborted == []


def test_a_sink_may_refuse_a_message_midway_and_is_then_aborted() -> None:
    sinks: list[Collecting] = []
    asm = sinking(sinks, fail_at=2)
    frames = list(wire_frames(Envelope.create("u", "r", 0, vector=np.ones(100, np.float32)), 64))
    with pytest.raises(UpdateRejectedError, match="refused the piece"):
        [asm.feed_bytes(message) for message in frames]
    assert sinks[0].closed == 0 and "refused the piece" in sinks[0].aborted[0]
    assert not asm.busy


def test_an_abandoned_message_aborts_its_sink() -> None:
    sinks: list[Collecting] = []
    asm = sinking(sinks)
    frames = list(wire_frames(Envelope.create("u", "r", 0, vector=np.ones(100, np.float32)), 64))
    asm.feed_bytes(frames[0])
    asm.abort("connection lost")
    assert sinks[0].aborted == ["connection lost"] and not asm.busy


def test_begin_may_decline_and_the_vector_is_assembled_whole() -> None:
    seen: list[VectorHead] = []

    def begin(head: VectorHead) -> None:
        seen.append(head)

    asm = FrameAssembler(begin=begin)
    vector = np.arange(50, dtype=np.float64)
    outs = [
        out
        for m in wire_frames(Envelope.create("u", "r", 0, vector=vector), 64)
        if (out := asm.feed_bytes(m)) is not None
    ]
    assert [h.nbytes for h in seen] == [400]
    np.testing.assert_array_equal(outs[0].vector, vector)
    # A message without a vector never asks for a sink.
    assert asm.feed_bytes(next(wire_frames(Envelope.create("hello", "r", 0)))) is not None
    assert len(seen) == 1
