"""The mask PRG: a 32-byte seed stretched into uint32 ring words by AES-128-CTR.

The first 16 bytes of the seed are the AES key and the last 16 the initial counter block,
so the whole seed is used. AES-128 matches the protocol's weakest link (X25519 gives
about 128-bit security) and runs about 1.4x faster than AES-256 here. The keystream is
AES-CTR over zeros, written by OpenSSL straight into a reused scratch buffer and read in
place as little-endian uint32 words: no per-element Python, no modulo (the ring is
Z_{2**32}), no fresh allocation per mask. OpenSSL releases the GIL while it encrypts, so
masks can be expanded on several threads (see :mod:`fedcare.secagg.masks`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
RingVector = npt.NDArray[np.uint32]

_SPARE = 15  # update_into wants block_size - 1 spare bytes after its output
# 128 KiB of keystream per call: a block of the accumulator and the scratch it is added
# from stay in a 512 KiB L2 cache while every mask is added to that block in turn.
_CHUNK_WORDS = 1 << 15
_ZEROS = memoryview(bytes(4 * _CHUNK_WORDS))  # shared read-only plaintext
_BIG_ENDIAN_HOST = sys.byteorder == "big"

Stream = Callable[[memoryview, memoryview], int]  # update_into of one seed's encryptor


def open_stream(seed: bytes) -> Stream:
    """A fresh AES-128-CTR keystream keyed by ``seed``; read it with :meth:`Keystream.read`."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, found {len(seed)}")
    stream: Stream = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor().update_into
    return stream


class Keystream:
    """A scratch buffer that mask streams are read into, a block of words at a time.

    Not thread-safe: each thread needs its own.
    """

    def __init__(self, max_words: int = _CHUNK_WORDS) -> None:
        self.chunk = max(1, min(max_words, _CHUNK_WORDS))
        self._buffer = np.empty(self.chunk + 4, dtype=np.uint32)  # 16 spare bytes
        self._bytes = self._buffer.view(np.uint8).data

    def read(self, stream: Stream, words: int) -> RingVector:
        """The next ``words`` (at most ``chunk``) words of ``stream``.

        A view of the scratch buffer, overwritten by the next read.
        """
        return self.reader(words)(stream)

    def reader(self, words: int) -> Callable[[Stream], RingVector]:
        """:meth:`read` of ``words`` words with the buffer views made once, for loops."""
        if not 0 <= words <= self.chunk:
            raise ValueError(f"a read takes 0 to {self.chunk} words, asked for {words}")
        zeros, out, view = (
            _ZEROS[: 4 * words],
            self._bytes[: 4 * words + _SPARE],
            self._buffer[:words],
        )

        def read(stream: Stream) -> RingVector:
            stream(zeros, out)
            if _BIG_ENDIAN_HOST:  # ring words are little-endian, as on the wire
                view.byteswap(inplace=True)
            return view

        return read


def expand_mask(seed: bytes, length: int) -> RingVector:
    """``length`` pseudo-random ring elements from a 32-byte seed, as a fresh array.

    Every seed is derived fresh per session (and pair), so each keys one stream only.
    """
    update = open_stream(seed)
    out = np.empty(length + 4, dtype=np.uint32)  # 16 spare bytes for update_into
    view = out.view(np.uint8).data
    for start in range(0, 4 * length, 4 * _CHUNK_WORDS):
        stop = min(start + 4 * _CHUNK_WORDS, 4 * length)
        update(_ZEROS[: stop - start], view[start : stop + _SPARE])
    mask: RingVector = out[:length]
    if _BIG_ENDIAN_HOST:
        mask.byteswap(inplace=True)
    return mask
