import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import UpdateRejectedError
from fedcare.he import EncryptedVector

chunks = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4)


def make(chunk_bytes: list[bytes]) -> EncryptedVector:
    return EncryptedVector(key_id=b"k" * 16, length=7, chunks=tuple(chunk_bytes), summands=3)


@given(chunks)
def test_round_trip_keeps_every_field(chunk_bytes):
    vector = make(chunk_bytes)
    data = vector.to_bytes()
    assert len(data) == vector.nbytes
    back = EncryptedVector.from_bytes(data)
    assert (back.key_id, back.length, back.chunks, back.summands) == (
        vector.key_id,
        vector.length,
        vector.chunks,
        vector.summands,
    )


@settings(max_examples=50)
@given(chunks, st.data())
def test_any_flipped_byte_is_refused(chunk_bytes, data):
    frame = bytearray(make(chunk_bytes).to_bytes())
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(UpdateRejectedError, match="site 'b'"):
        EncryptedVector.from_bytes(bytes(frame), source="site 'b'")


def test_truncated_and_foreign_bytes_are_refused_with_the_reason():
    frame = make([b"abc", b"de"]).to_bytes()
    with pytest.raises(UpdateRejectedError, match="does not match its header"):
        EncryptedVector.from_bytes(frame[:-5])
    with pytest.raises(UpdateRejectedError, match="truncated"):
        EncryptedVector.from_bytes(frame[:10])
    with pytest.raises(UpdateRejectedError, match="expected magic"):
        EncryptedVector.from_bytes(b"JUNK" + frame[4:])
    with pytest.raises(UpdateRejectedError, match="checksum mismatch"):
        EncryptedVector.from_bytes(frame[:-1] + bytes([frame[-1] ^ 1]))
