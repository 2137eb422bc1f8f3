"""Paillier encryption of small float vectors (python-paillier), exact in fixed point.

Each value v becomes the integer round(v * 2**frac_bits) modulo n (negative values wrap
to n - |m|) and is encrypted on its own: one 2 * key-bits ciphertext per value, so this
is for short vectors (vertical FL statistics, a handful of scalars), not for models. The
sum is exact: the decrypted sum equals the sum of the rounded inputs, so it differs
from the plain sum by at most count * 2**-(frac_bits + 1) per entry.

Ciphertexts travel as fixed-width big-endian bytes (binary frame) or as hex strings
(JSON); keys as hex integers. phe draws randomness from the OS CSPRNG and uses gmpy2
when it is installed (about 10x faster).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError

DEFAULT_KEY_BITS = 2048
DEFAULT_FRAC_BITS = 32
# Entries beyond 2**40 are not model statistics; the bound keeps sums of up to 2**1900
# vectors from wrapping modulo n for any key of at least 2048 bits.
MAX_ABS_VALUE = 2.0**40
_MAGIC = b"FCPA"
_VERSION = 1
_HEADER = struct.Struct(">4sB16sBIIH")


def _phe() -> Any:
    try:
        from phe import paillier
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("Paillier encryption needs phe: pip install 'fedcare[he]'") from exc
    return paillier


def key_id(public_key: Any) -> bytes:
    """16-byte fingerprint of a public key (SHA-256 of n)."""
    n = int(public_key.n)
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).digest()[:16]


def generate_keypair(key_bits: int = DEFAULT_KEY_BITS) -> tuple[Any, Any]:
    """A fresh (public, private) key pair; n has ``key_bits`` bits."""
    if key_bits < 1024 or key_bits % 256:
        raise ConfigError(
            f"Paillier key_bits must be a multiple of 256 and at least 1024, found {key_bits}"
        )
    return _phe().generate_paillier_keypair(n_length=key_bits)  # type: ignore[no-any-return]


def public_key_to_json(public_key: Any) -> dict[str, str]:
    return {"n": format(int(public_key.n), "x")}


def public_key_from_json(data: dict[str, Any]) -> Any:
    n = _hex_int(data, "n", what="Paillier public key")
    if n.bit_length() < 1024 or n % 2 == 0:
        raise ConfigError(
            f"Paillier public key: n must be an odd modulus of at least 1024 bits, found "
            f"{n.bit_length()} bits"
        )
    return _phe().PaillierPublicKey(n)


def private_key_to_json(private_key: Any) -> dict[str, str]:
    """The key holder's secret (p, q); never send it to the party that adds ciphertexts."""
    return {"p": format(int(private_key.p), "x"), "q": format(int(private_key.q), "x")}


def private_key_from_json(data: dict[str, Any]) -> Any:
    p = _hex_int(data, "p", what="Paillier private key")
    q = _hex_int(data, "q", what="Paillier private key")
    paillier = _phe()
    try:
        return paillier.PaillierPrivateKey(paillier.PaillierPublicKey(p * q), p, q)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"Paillier private key: p and q are not a valid pair ({exc})") from exc


def _hex_int(data: dict[str, Any], field: str, *, what: str) -> int:
    value = data.get(field)
    try:
        return int(str(value), 16)
    except ValueError as exc:
        raise ConfigError(
            f"{what}: field '{field}' must be a hex integer, found {value!r}"
        ) from exc


@dataclass(frozen=True, eq=False)
class PaillierVector:
    """Encrypted fixed-point values under the key ``key_id``; ``summands`` vectors summed."""

    key_id: bytes
    frac_bits: int
    ciphertexts: tuple[int, ...]
    summands: int = 1

    def to_bytes(self, public_key: Any) -> bytes:
        width = (int(public_key.nsquare).bit_length() + 7) // 8
        head = _HEADER.pack(
            _MAGIC,
            _VERSION,
            self.key_id,
            self.frac_bits,
            len(self.ciphertexts),
            self.summands,
            width,
        )
        return head + b"".join(c.to_bytes(width, "big") for c in self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "payload") -> PaillierVector:
        if len(data) < _HEADER.size:
            raise UpdateRejectedError(
                f"{source}: Paillier vector is truncated ({len(data)} bytes, header alone is "
                f"{_HEADER.size})"
            )
        magic, version, kid, frac_bits, count, summands, width = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise UpdateRejectedError(
                f"{source}: not a Paillier vector of format version {_VERSION} (found magic "
                f"{bytes(magic)!r}, version {version})"
            )
        if len(data) != _HEADER.size + count * width:
            raise UpdateRejectedError(
                f"{source}: Paillier vector of {count} ciphertexts x {width} bytes needs "
                f"{_HEADER.size + count * width} bytes, found {len(data)}"
            )
        cts = tuple(
            int.from_bytes(data[_HEADER.size + i * width : _HEADER.size + (i + 1) * width], "big")
            for i in range(count)
        )
        return cls(key_id=bytes(kid), frac_bits=frac_bits, ciphertexts=cts, summands=summands)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id.hex(),
            "frac_bits": self.frac_bits,
            "summands": self.summands,
            "ciphertexts": [format(c, "x") for c in self.ciphertexts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "payload") -> PaillierVector:
        try:
            return cls(
                key_id=bytes.fromhex(data["key_id"]),
                frac_bits=int(data["frac_bits"]),
                summands=int(data["summands"]),
                ciphertexts=tuple(int(c, 16) for c in data["ciphertexts"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejectedError(
                f"{source}: Paillier vector JSON needs key_id (hex), frac_bits, summands and "
                f"ciphertexts (hex strings) ({type(exc).__name__}: {exc})"
            ) from exc


def encrypt_vector(
    public_key: Any, vector: npt.ArrayLike, *, frac_bits: int = DEFAULT_FRAC_BITS
) -> PaillierVector:
    """Encrypt each value as round(v * 2**frac_bits) mod n."""
    x = np.asarray(vector, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all() or (x.size and np.abs(x).max() > MAX_ABS_VALUE):
        raise UpdateRejectedError(
            f"Paillier input must be a flat vector of finite values within +-{MAX_ABS_VALUE:g}, "
            f"found shape {x.shape}"
        )
    if not 0 <= frac_bits <= 64:
        raise ConfigError(f"Paillier frac_bits must be between 0 and 64, found {frac_bits}")
    n = int(public_key.n)
    ints = np.round(np.ldexp(x, frac_bits))
    cts = tuple(public_key.raw_encrypt(int(m) % n) for m in ints.tolist())
    return PaillierVector(key_id=key_id(public_key), frac_bits=frac_bits, ciphertexts=cts)


def add_vectors(public_key: Any, vectors: Iterable[PaillierVector]) -> PaillierVector:
    """Sum encrypted vectors: the product of ciphertexts modulo n**2, entry by entry."""
    from phe.util import mulmod  # gmpy2's when installed

    nsquare = int(public_key.nsquare)
    kid = key_id(public_key)
    total: list[int] | None = None
    frac_bits = summands = 0
    for index, vec in enumerate(vectors):
        _check(vec, kid, nsquare, source=f"Paillier vector {index}")
        if total is None:
            total, frac_bits = list(vec.ciphertexts), vec.frac_bits
        elif len(vec.ciphertexts) != len(total) or vec.frac_bits != frac_bits:
            raise UpdateRejectedError(
                f"Paillier vector {index}: {len(vec.ciphertexts)} values at frac_bits "
                f"{vec.frac_bits}, the others have {len(total)} at {frac_bits}"
            )
        else:
            total = [mulmod(a, b, nsquare) for a, b in zip(total, vec.ciphertexts, strict=True)]
        summands += vec.summands
    if total is None:
        raise ProtocolError("no Paillier vector was added, so there is no sum to return")
    return PaillierVector(kid, frac_bits, tuple(total), summands)


def decrypt_vector(private_key: Any, vector: PaillierVector) -> npt.NDArray[np.float64]:
    """Decrypt to float64; negative values come back from the upper half of Z_n."""
    public = private_key.public_key
    _check(vector, key_id(public), int(public.nsquare), source="Paillier aggregate")
    n = int(public.n)
    # Honest sums stay far below n / 2; anything larger is a corrupt or forged ciphertext.
    limit = int(MAX_ABS_VALUE) * 2**vector.frac_bits * max(vector.summands, 1)
    values = []
    for index, c in enumerate(vector.ciphertexts):
        m = int(private_key.raw_decrypt(c))
        signed = m - n if m > n // 2 else m
        if abs(signed) > limit:
            raise ProtocolError(
                f"Paillier aggregate: value {index} decrypts outside +-{MAX_ABS_VALUE:g} x "
                f"{vector.summands} summands; the ciphertext is corrupt"
            )
        values.append(float(np.ldexp(float(signed), -vector.frac_bits)))
    return np.asarray(values, dtype=np.float64)


def _check(vec: PaillierVector, kid: bytes, nsquare: int, *, source: str) -> None:
    if vec.key_id != kid:
        raise UpdateRejectedError(
            f"{source}: encrypted under another key (expected key id {kid.hex()}, found "
            f"{vec.key_id.hex()})"
        )
    for index, c in enumerate(vec.ciphertexts):
        if not 0 < c < nsquare:
            raise UpdateRejectedError(
                f"{source}: ciphertext {index} is outside (0, n**2); the payload is corrupt"
            )
