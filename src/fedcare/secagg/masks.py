"""The masks both sides must agree on: pairwise seeds, their signs, and adding them.

Client u adds ``+PRG(s_uv)`` for each partner v with u < v and ``-PRG(s_uv)`` for u > v,
so every pair cancels in the sum; the server recomputes the same seeds for pairs whose
other end dropped out.
"""

from __future__ import annotations

import numpy as np

from fedcare.secagg.crypto import KeyPair, RingVector, derive_key, expand_mask


def pair_seed(
    own: KeyPair, own_id: int, peer_s_pk: bytes, peer_id: int, session_id: bytes
) -> bytes:
    """The mask seed s_uv both ends derive from X25519 on their s-keys."""
    low, high = sorted((own_id, peer_id))
    return derive_key(own.agree(peer_s_pk), session_id, b"mask", low, high)


def add_mask(acc: RingVector, seed: bytes, sign: int) -> None:
    """``acc += sign * PRG(seed)`` in Z_{2**32}, in place (uint32 arithmetic wraps)."""
    mask = expand_mask(seed, acc.shape[0])
    if sign > 0:
        np.add(acc, mask, out=acc)
    else:
        np.subtract(acc, mask, out=acc)


def pair_sign(client: int, peer: int) -> int:
    """The sign of the pair mask in ``client``'s masked input."""
    return 1 if client < peer else -1
