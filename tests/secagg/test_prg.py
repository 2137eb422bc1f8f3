"""The mask PRG is AES-128-CTR over zeros (key = seed[:16], first counter = seed[16:]),
read as little-endian uint32 words; checked against a block-by-block reference."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.secagg.prg import Keystream, expand_mask, open_stream


def reference(seed: bytes, length: int) -> np.ndarray:
    """AES-128 of each counter block in turn, the counter a 128-bit big-endian integer."""
    ecb = Cipher(algorithms.AES(seed[:16]), modes.ECB()).encryptor()
    counter = int.from_bytes(seed[16:], "big")
    blocks = (length + 3) // 4
    data = b"".join(((counter + k) % 2**128).to_bytes(16, "big") for k in range(blocks))
    stream = ecb.update(data)
    return np.frombuffer(stream, dtype="<u4")[:length].astype(np.uint32)


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), length=st.integers(0, 3000))
def test_expansion_is_aes128_ctr_keystream_as_little_endian_words(seed, length):
    assert np.array_equal(expand_mask(seed, length), reference(seed, length))


def test_counter_carries_across_32_64_and_128_bit_boundaries():
    for counter in (2**32 - 2, 2**64 - 3, 2**128 - 2):
        seed = bytes(range(16)) + counter.to_bytes(16, "big")
        assert np.array_equal(expand_mask(seed, 40), reference(seed, 40))


def test_long_masks_cross_chunk_boundaries_unchanged():
    seed = bytes(range(32))
    length = (1 << 15) * 3 + 7  # four pieces of the shared zero buffer
    full = expand_mask(seed, length)
    assert np.array_equal(full[-1000:], reference(seed, length)[-1000:])
    scratch = Keystream(max_words=1000)  # read in small pieces from one scratch buffer
    stream = open_stream(seed)
    pieces = [scratch.read(stream, min(1000, length - s)).copy() for s in range(0, length, 1000)]
    assert np.array_equal(np.concatenate(pieces), full)


def test_each_read_continues_the_stream_where_the_last_stopped():
    scratch, stream = Keystream(max_words=64), open_stream(bytes(32))
    first, second = scratch.read(stream, 3).copy(), scratch.read(stream, 5).copy()
    assert np.array_equal(np.concatenate([first, second]), expand_mask(bytes(32), 8))


def test_a_seed_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        expand_mask(bytes(16), 10)


def test_a_read_larger_than_the_scratch_buffer_is_refused():
    with pytest.raises(ValueError, match="0 to 64 words"):
        Keystream(max_words=64).read(open_stream(bytes(32)), 65)
