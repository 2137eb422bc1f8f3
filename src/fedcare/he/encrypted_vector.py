"""An encrypted flat vector and its byte format (no pickle).

A vector of ``length`` float32 values travels as ceil(length / slots) CKKS ciphertexts,
each serialised by SEAL. The frame around them names the key set the ciphertexts belong
to, how many site vectors were summed into them, and ends with a SHA-256 digest of
everything before it: CKKS ciphertexts have no integrity of their own (a flipped bit in
a coefficient still loads and decrypts to garbage), so the digest is what turns
corruption in transit or storage into an error. It is not a signature; authenticity of
the sender is the transport's job (mTLS).

Frame, all integers big-endian::

    b"FCHE" | version u8 | key_id 16 bytes | length u64 | summands u32 | chunks u32
    | chunk sizes u32 x chunks | chunk bytes ... | sha256 of all the above (32 bytes)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from fedcare.core.errors import UpdateRejectedError

MAGIC = b"FCHE"
VERSION = 1
KEY_ID_BYTES = 16
_HEADER = struct.Struct(f">4sB{KEY_ID_BYTES}sQII")
_DIGEST_BYTES = 32
# A chunk is one SEAL ciphertext: about 2 MiB at N = 32768; 64 MiB is a generous cap
# that keeps a corrupt size field from asking for absurd allocations.
_MAX_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class EncryptedVector:
    """``length`` values encrypted as ``chunks`` (SEAL ciphertext bytes) under ``key_id``."""

    key_id: bytes
    length: int
    chunks: tuple[bytes, ...]
    summands: int = 1

    @property
    def nbytes(self) -> int:
        """Size of :meth:`to_bytes`, the bytes this vector costs on the wire."""
        return _HEADER.size + 4 * len(self.chunks) + sum(map(len, self.chunks)) + _DIGEST_BYTES

    def to_bytes(self) -> bytes:
        parts = [
            _HEADER.pack(MAGIC, VERSION, self.key_id, self.length, self.summands, len(self.chunks)),
            struct.pack(f">{len(self.chunks)}I", *map(len, self.chunks)),
            *self.chunks,
        ]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        parts.append(digest.digest())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "payload") -> EncryptedVector:
        """Parse a frame; ``source`` names where it came from (a site) in error messages."""
        view = memoryview(data)
        if len(view) < _HEADER.size + _DIGEST_BYTES:
            raise UpdateRejectedError(
                f"{source}: encrypted vector is truncated (expected at least "
                f"{_HEADER.size + _DIGEST_BYTES} bytes, found {len(view)})"
            )
        magic, version, key_id, length, summands, n_chunks = _HEADER.unpack_from(view)
        if magic != MAGIC:
            raise UpdateRejectedError(
                f"{source}: not an encrypted vector (expected magic {MAGIC!r}, found {bytes(magic)!r})"
            )
        if version != VERSION:
            raise UpdateRejectedError(
                f"{source}: encrypted vector format version {version} is not supported "
                f"(expected {VERSION})"
            )
        sizes_end = _HEADER.size + 4 * n_chunks
        if len(view) < sizes_end + _DIGEST_BYTES:
            raise UpdateRejectedError(
                f"{source}: encrypted vector is truncated: header announces {n_chunks} "
                f"ciphertexts but only {len(view)} bytes arrived"
            )
        sizes = struct.unpack_from(f">{n_chunks}I", view, _HEADER.size)
        expected_total = sizes_end + sum(sizes) + _DIGEST_BYTES
        if len(view) != expected_total or any(s > _MAX_CHUNK_BYTES for s in sizes):
            raise UpdateRejectedError(
                f"{source}: encrypted vector size does not match its header (expected "
                f"{expected_total} bytes, found {len(view)}); the payload is truncated or corrupt"
            )
        body_end = expected_total - _DIGEST_BYTES
        found = hashlib.sha256(view[:body_end]).digest()
        if found != bytes(view[body_end:]):
            raise UpdateRejectedError(
                f"{source}: encrypted vector checksum mismatch (expected "
                f"{bytes(view[body_end:]).hex()[:16]}..., found {found.hex()[:16]}...); the "
                f"bytes were corrupted in transit or storage"
            )
        chunks = []
        offset = sizes_end
        for size in sizes:
            chunks.append(bytes(view[offset : offset + size]))
            offset += size
        return cls(key_id=bytes(key_id), length=length, chunks=tuple(chunks), summands=summands)
