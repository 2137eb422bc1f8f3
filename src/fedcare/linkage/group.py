"""The commutative blinding PSI rests on: X25519 scalar multiplication on Curve25519's x-line.

An element is a 32-byte u-coordinate. ``blind(u, k)`` is RFC 7748's X25519(k, u), the
x-coordinate of [k]P for the point P with x(P) = u, so x([a][b]P) = x([b][a]P): blinding
commutes, and an element blinded by every party's key is the same whichever order the keys
were applied in. A keyed hash (32 uniform bytes) is used directly as the u-coordinate, as
SecretFlow's ECDH-PSI does for Curve25519: every u is on the curve or on its quadratic
twist, and Curve25519 is twist-secure (the twist's large prime subgroup has ~2^253
elements), while X25519's scalar clamping (a multiple of the cofactor 8) removes any
small-order component. See docs/linkage.md for why this and not Ristretto255.

The hot loop is one OpenSSL call per element (~35 us of curve arithmetic under ~3 us of
Python overhead on this machine), so batching beyond a plain list comprehension buys little.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedcare.core.errors import ProtocolError

ELEMENT_BYTES = 32


def new_key() -> X25519PrivateKey:
    """A party's fresh secret blinding key for one linkage (never reused, never sent)."""
    return X25519PrivateKey.generate()


def key_from_bytes(secret: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(secret)


def check_elements(blob: bytes, *, sender: str) -> int:
    """Number of elements in ``blob``; a length that is not a multiple of 32 is refused."""
    if len(blob) % ELEMENT_BYTES:
        raise ProtocolError(
            f"PSI elements from {sender!r}: expected a multiple of {ELEMENT_BYTES} bytes, "
            f"found {len(blob)}"
        )
    return len(blob) // ELEMENT_BYTES


def blind(blob: bytes, key: X25519PrivateKey, *, sender: str) -> bytes:
    """Every 32-byte element of ``blob`` multiplied by ``key``; concatenated, same order."""
    check_elements(blob, sender=sender)
    load = X25519PublicKey.from_public_bytes
    exchange = key.exchange
    try:
        return b"".join(
            [
                exchange(load(blob[i : i + ELEMENT_BYTES]))
                for i in range(0, len(blob), ELEMENT_BYTES)
            ]
        )
    except ValueError as error:
        # OpenSSL refuses a small-order input (all-zero output). A hash never gives one
        # (probability ~2^-250); a peer that sends one is not following the protocol.
        raise ProtocolError(
            f"PSI elements from {sender!r}: an element of small order (not a hashed identifier)"
        ) from error
