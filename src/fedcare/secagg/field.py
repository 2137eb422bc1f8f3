"""Arithmetic in the prime field GF(p) with p = 2**521 - 1, the field Shamir sharing uses.

Why this prime: a shared secret is 32 bytes (a mask seed or an X25519 private key) plus a
16-byte integrity tag, 384 bits in all, so it fits in one element of a 521-bit Mersenne
field. One element per secret keeps sharing and Lagrange interpolation to plain Python
integer arithmetic with no chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from fedcare.core.errors import ProtocolError

PRIME = 2**521 - 1
ELEMENT_BYTES = 66  # ceil(521 / 8): fixed width for encoding an element on the wire

RandomBytes = Callable[[int], bytes]


def random_element(rng: RandomBytes) -> int:
    """A uniform element of GF(p) drawn from ``rng`` (rejection sampling, ~never rejects)."""
    while True:
        value = int.from_bytes(rng(ELEMENT_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial ``sum(c_i * x**i)`` at ``x`` (Horner's rule)."""
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


@lru_cache(maxsize=1024)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Weights ``w_i`` such that ``f(0) = sum(w_i * f(x_i))`` for any f of degree < len(xs).

    Cached because the server reconstructs many secrets from the same set of responders.
    """
    if len(set(xs)) != len(xs):
        raise ProtocolError(f"interpolation points must be distinct, found {sorted(xs)}")
    if any(not 0 < x < PRIME for x in xs):
        raise ProtocolError("interpolation points must be non-zero field elements")
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def encode_element(value: int) -> bytes:
    return value.to_bytes(ELEMENT_BYTES, "big")


def decode_element(data: bytes) -> int:
    """Parse a fixed-width element; values outside the field are rejected, not reduced."""
    if len(data) != ELEMENT_BYTES:
        raise ProtocolError(f"field element must be {ELEMENT_BYTES} bytes, found {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ProtocolError("field element is not reduced modulo the prime")
    return value
