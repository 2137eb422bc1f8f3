"""The primitives SecAgg needs, all from ``cryptography``: key agreement, KDF, AEAD, PRG.

- X25519 for key agreement: one pair for encrypting shares (c), one for masks (s).
- HKDF-SHA256 turns an agreed secret into a key bound to the session and the two ends.
- ChaCha20-Poly1305 encrypts shares sent between sites through the server. Keys are
  directional (u->v differs from v->u) and the associated data names the session, stage,
  sender and recipient, so a replayed or redirected ciphertext fails authentication.
- The PRG is the AES-256-CTR keystream read as little-endian uint32 ring elements: OpenSSL
  produces it at several GB/s, with no Python loop over elements.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcare.core.errors import ProtocolError
from fedcare.secagg.field import RandomBytes

KEY_BYTES = 32
NONCE_BYTES = 12
RingVector = npt.NDArray[np.uint32]

_ZERO_COUNTER = bytes(16)


def system_random(size: int) -> bytes:
    """The default randomness source: the operating system's CSPRNG."""
    return os.urandom(size)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``private`` is kept as raw bytes so it can be secret-shared."""

    private: bytes = field(repr=False)
    public: bytes
    _key: X25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.private) != KEY_BYTES:
            raise ProtocolError(f"X25519 private key must be {KEY_BYTES} bytes")
        object.__setattr__(self, "_key", X25519PrivateKey.from_private_bytes(self.private))

    @classmethod
    def generate(cls, rng: RandomBytes = system_random) -> KeyPair:
        return cls.from_private(rng(KEY_BYTES))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != KEY_BYTES:
            raise ProtocolError(f"X25519 private key must be {KEY_BYTES} bytes")
        public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
        return cls(private, public)

    def agree(self, peer_public: bytes) -> bytes:
        """The raw X25519 shared secret with ``peer_public``; low-order points are refused."""
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public)
            return self._key.exchange(peer)
        except ValueError as exc:
            raise ProtocolError(f"key agreement failed: {exc}") from exc


def derive_key(shared: bytes, session_id: bytes, label: bytes, a: int, b: int) -> bytes:
    """HKDF-SHA256 of an agreed secret, bound to the session, a purpose label and two ids."""
    info = b"fedcare/secagg/" + label + struct.pack(">II", a, b)
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session_id, info=info).derive(shared)


def associated_data(session_id: bytes, stage: int, sender: int, recipient: int) -> bytes:
    return b"fedcare/secagg/ad" + struct.pack(">BII", stage, sender, recipient) + session_id


def seal(key: bytes, plaintext: bytes, ad: bytes, rng: RandomBytes) -> tuple[bytes, bytes]:
    """Encrypt and authenticate; returns ``(nonce, ciphertext)``."""
    nonce = rng(NONCE_BYTES)
    return nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Decrypt; a wrong key, tampered bytes or different associated data raise ProtocolError."""
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError(f"nonce must be {NONCE_BYTES} bytes, found {len(nonce)}")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag as exc:
        raise ProtocolError(
            "encrypted share failed authentication (tampered, replayed or redirected)"
        ) from exc


_ZEROS = memoryview(bytes(1 << 22))  # 4 MiB of plaintext zeros, read-only, shared


def expand_mask(seed: bytes, length: int) -> RingVector:
    """``length`` pseudo-random uint32 ring elements from a 32-byte seed (AES-256-CTR).

    Each seed is used for one stream only (fresh per session), so a fixed counter is safe.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"mask seed must be {KEY_BYTES} bytes, found {len(seed)}")
    nbytes = 4 * length
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    # The keystream is AES-CTR over zeros. Encrypt from one shared zero buffer into an
    # uninitialised array: allocating and zero-filling fresh buffers per mask cost 5x the
    # AES itself. update_into wants block_size - 1 spare bytes in its output.
    out = np.empty(length + 4, dtype="<u4")
    view = out.view(np.uint8).data  # a writable byte view of the array
    for start in range(0, nbytes, len(_ZEROS)):
        stop = min(start + len(_ZEROS), nbytes)
        encryptor.update_into(_ZEROS[: stop - start], view[start : stop + 15])
    mask: RingVector = out[:length]
    return mask
