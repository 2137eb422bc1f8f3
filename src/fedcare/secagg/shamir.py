"""Shamir t-out-of-n secret sharing of 32-byte secrets, with an integrity tag.

Wrong reconstructions fail loudly. Interpolating fewer shares than the polynomial's degree
needs (say, because a caller passes a lower threshold than was used to split) or a
corrupted share gives a field element that is unrelated to the secret. So each secret is
shared together with a tag: the field element is ``secret || SHA-256(secret)[:16]``. A
reconstruction whose tag does not match raises ProtocolError; a wrong element passes only
with probability about 2**-128. (The alternative, checking that t+1 shares lie on one
polynomial, needs a spare share that SecAgg cannot count on after dropouts.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fedcare.core.errors import ProtocolError
from fedcare.secagg.field import PRIME, RandomBytes, evaluate, interpolate_at_zero, random_element

SECRET_BYTES = 32
_TAG_BYTES = 16
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Share:
    """The point ``(x, f(x))``; ``x`` is the holder's evaluation point (never 0)."""

    x: int
    y: int


def _tag(secret: bytes) -> bytes:
    return hashlib.sha256(b"fedcare/shamir-tag" + secret).digest()[:_TAG_BYTES]


def split(secret: bytes, threshold: int, xs: Iterable[int], rng: RandomBytes) -> dict[int, Share]:
    """Shares of ``secret`` at each point in ``xs``; any ``threshold`` of them recover it."""
    points = sorted(set(xs))
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, found {len(secret)}")
    if not 1 <= threshold <= len(points):
        raise ValueError(
            f"threshold must be in [1, {len(points)}] (the holders), found {threshold}"
        )
    if any(not 0 < x < PRIME for x in points):
        raise ValueError("share points must be non-zero field elements")
    constant = int.from_bytes(secret + _tag(secret), "big")
    coefficients = [constant] + [random_element(rng) for _ in range(threshold - 1)]
    return {x: Share(x, evaluate(coefficients, x)) for x in points}


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (the lowest points are used).

    Raises ProtocolError when there are too few shares, when points repeat, or when the
    result fails its integrity tag (too few shares for the real polynomial, or a bad share).
    """
    return combine_many({0: shares}, threshold)[0]


def combine_many(shares: Mapping[K, Sequence[Share]], threshold: int) -> dict[K, bytes]:
    """:func:`combine` for many secrets at once: ``{owner: shares}`` to ``{owner: secret}``.

    All interpolations share one modular inversion
    (:func:`~fedcare.secagg.field.interpolate_at_zero`); the first failing owner raises.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, found {threshold}")
    chosen: dict[K, list[Share]] = {}
    for owner, given in shares.items():
        by_x: dict[int, Share] = {}
        for share in given:
            if share.x in by_x and by_x[share.x].y != share.y:
                raise ProtocolError(f"two different shares claim point {share.x}")
            by_x[share.x] = share
        if len(by_x) < threshold:
            raise ProtocolError(
                f"cannot reconstruct: {len(by_x)} distinct shares, threshold is {threshold}"
            )
        chosen[owner] = [by_x[x] for x in sorted(by_x)[:threshold]]
    values = interpolate_at_zero([[(s.x, s.y) for s in c] for c in chosen.values()])
    return {owner: _untag(value) for owner, value in zip(chosen, values, strict=True)}


def _untag(value: int) -> bytes:
    """The secret inside an interpolated element, after checking its integrity tag."""
    if value >= 1 << (8 * (SECRET_BYTES + _TAG_BYTES)):
        raise ProtocolError("reconstructed value fails its integrity check (bad or too few shares)")
    raw = value.to_bytes(SECRET_BYTES + _TAG_BYTES, "big")
    secret, tag = raw[:SECRET_BYTES], raw[SECRET_BYTES:]
    if tag != _tag(secret):
        raise ProtocolError("reconstructed value fails its integrity check (bad or too few shares)")
    return secret
