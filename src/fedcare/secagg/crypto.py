"""The primitives SecAgg needs, all from ``cryptography``: key agreement, KDF, AEAD, PRG.

- X25519 for key agreement: one pair for encrypting shares (c), one for masks (s).
- HKDF-SHA256 turns an agreed secret into a key bound to the session and the two ends.
- ChaCha20-Poly1305 encrypts shares sent between sites through the server. Keys are
  directional (u->v differs from v->u) and the associated data names the session, stage,
  sender and recipient, so a replayed or redirected ciphertext fails authentication.
- The mask PRG (AES-128-CTR read as uint32 ring words) lives in :mod:`fedcare.secagg.prg`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcare.core.errors import ProtocolError
from fedcare.secagg.field import RandomBytes
from fedcare.secagg.prg import RingVector, expand_mask

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "KeyPair",
    "RingVector",
    "associated_data",
    "derive_key",
    "expand_mask",
    "open_sealed",
    "seal",
    "system_random",
]

KEY_BYTES = 32
NONCE_BYTES = 12


def system_random(size: int) -> bytes:
    """The default randomness source: the operating system's CSPRNG."""
    return os.urandom(size)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``private`` is kept as raw bytes so it can be secret-shared."""

    private: bytes = field(repr=False)
    public: bytes
    # Loading a private key costs a scalar multiplication: from_private passes its own.
    _key: X25519PrivateKey | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.private) != KEY_BYTES:
            raise ProtocolError(f"X25519 private key must be {KEY_BYTES} bytes")
        if self._key is None:
            object.__setattr__(self, "_key", X25519PrivateKey.from_private_bytes(self.private))

    @classmethod
    def generate(cls, rng: RandomBytes = system_random) -> KeyPair:
        return cls.from_private(rng(KEY_BYTES))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != KEY_BYTES:
            raise ProtocolError(f"X25519 private key must be {KEY_BYTES} bytes")
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(private, key.public_key().public_bytes_raw(), key)

    @property
    def _private_key(self) -> X25519PrivateKey:
        if self._key is None:  # set in __post_init__; this keeps mypy honest
            raise ProtocolError("X25519 key pair was not initialised")
        return self._key

    def agree(self, peer_public: bytes) -> bytes:
        """The raw X25519 shared secret with ``peer_public``; low-order points are refused."""
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public)
            return self._private_key.exchange(peer)
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
