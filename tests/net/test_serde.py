"""Envelope <-> protobuf frames: round trips, chunking, and refusal of malformed streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.net.serde import (
    FrameAssembler,
    envelope_frames,
    frames_to_envelopes,
    head_of,
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
    header=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8), max_size=4),
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
