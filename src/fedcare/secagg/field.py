"""Arithmetic in the prime field GF(p) with p = 2**521 - 1, the field Shamir sharing uses.

Why this prime: a shared secret is 32 bytes (a mask seed or an X25519 private key) plus a
16-byte integrity tag, 384 bits in all, so it fits in one element of a 521-bit Mersenne
field. One element per secret keeps sharing and Lagrange interpolation to plain Python
integer arithmetic with no chunking.
"""

from __future__ import annotations

import math
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
    _check_points(xs)
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ProtocolError(f"interpolation points must be distinct, found {sorted(xs)}")
    if any(not 0 < x < PRIME for x in xs):
        raise ProtocolError("interpolation points must be non-zero field elements")


_EXACT_BITS = 2048  # above this, exact common denominators cost more than field weights


def interpolate_at_zero(point_sets: Sequence[Sequence[tuple[int, int]]]) -> list[int]:
    """``f(0)`` for each list of points ``(x, f(x))`` of a polynomial of degree < its length.

    Many secrets, few modular inversions. With ``e_i = x_i * prod_{j != i} (x_j - x_i)``,
    ``f(0) = N * sum_i(y_i / e_i)`` for ``N = prod_j x_j``; for SecAgg+'s small holder sets
    the ``e_i`` are small exact integers, so ``f(0) = N * sum_i(y_i * E / e_i) / E`` with
    ``E = prod_i e_i`` needs no field inversion of its own, and all the ``E`` are inverted
    together (Montgomery's trick). Large sets (classic SecAgg, where every owner has the
    same responders) use cached Lagrange weights instead.
    """
    fractions: list[tuple[int, int]] = []  # f(0) = numerator / denominator in the field
    for points in point_sets:
        xs = tuple(x for x, _ in points)
        _check_points(xs)
        if len(xs) ** 2 * max(xs).bit_length() > _EXACT_BITS:
            weights = lagrange_at_zero(xs)
            fractions.append(
                (sum(w * y for w, (_, y) in zip(weights, points, strict=True)) % PRIME, 1)
            )
            continue
        e = []
        for xi in xs:
            ei = xi
            for xj in xs:
                if xj != xi:
                    ei *= xj - xi
            e.append(ei)
        big_e = math.prod(e)
        s = sum(y * (big_e // ei) for (_, y), ei in zip(points, e, strict=True))
        fractions.append((math.prod(xs) * s % PRIME, big_e % PRIME))  # E != 0 mod p
    inverses = _batch_inverse([den for _, den in fractions])
    return [num * inv % PRIME for (num, _), inv in zip(fractions, inverses, strict=True)]


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses of non-zero field elements with one modular inversion in all."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        out[k] = inverse * prefix[k] % PRIME
        inverse = inverse * values[k] % PRIME
    return out


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
