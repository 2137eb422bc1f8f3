"""The masks both sides must agree on: pairwise seeds, their signs, and adding them.

Client u adds ``+PRG(s_uv)`` for each partner v with u < v and ``-PRG(s_uv)`` for u > v,
so every pair cancels in the sum; the server recomputes the same seeds for pairs whose
other end dropped out. All arithmetic is in Z_{2**32}: uint32 additions that wrap.

Masks are added in place from one reused keystream buffer, a cache-sized block at a time,
so adding k masks to a vector costs k AES-CTR passes and k additions, no temporaries.
:func:`add_masks_threaded` spreads them over threads for the server, which expands one
per survivor and one per pair of a dropped client; OpenSSL releases the GIL while it
encrypts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedcare.secagg.crypto import KeyPair, derive_key
from fedcare.secagg.prg import SEED_BYTES, Keystream, RingVector, open_stream

# A seed, or a function that derives one: add_masks_threaded runs it on the thread that
# expands the mask, so one thread's X25519 (which holds the GIL) overlaps another's AES.
Seed = bytes | Callable[[], bytes]
Mask = tuple[Seed, int]  # (seed, sign): the term sign * PRG(seed)

_MIN_WORDS_PER_THREAD = 1 << 15  # below this, threads cost more than they save
_PARTIALS_BYTES = 256 << 20  # memory the extra threads' partial sums may take


def pair_seed(
    own: KeyPair, own_id: int, peer_s_pk: bytes, peer_id: int, session_id: bytes
) -> bytes:
    """The mask seed s_uv both ends derive from X25519 on their s-keys."""
    low, high = sorted((own_id, peer_id))
    return derive_key(own.agree(peer_s_pk), session_id, b"mask", low, high)


def pair_sign(client: int, peer: int) -> int:
    """The sign of the pair mask in ``client``'s masked input."""
    return 1 if client < peer else -1


def _check(seed: Seed, sign: int) -> None:
    if sign not in (1, -1) or (isinstance(seed, bytes) and len(seed) != SEED_BYTES):
        raise ValueError(f"a mask is a {SEED_BYTES}-byte seed and a sign of +1 or -1")


def add_masks(acc: RingVector, masks: Iterable[Mask], stream: Keystream | None = None) -> None:
    """``acc += sum(sign * PRG(seed))`` in Z_{2**32}, in place, on this thread.

    Block by block: every mask's next piece is added to one cache-sized block of ``acc``
    before moving on, so the block and the scratch buffer stay in cache.
    """
    length = acc.shape[0]
    scratch = stream if stream is not None else Keystream(length)
    streams = []
    for given, sign in masks:
        seed = given() if callable(given) else given
        _check(seed, sign)
        streams.append((open_stream(seed), np.add if sign > 0 else np.subtract))
    for start in range(0, length, scratch.chunk):
        words = min(scratch.chunk, length - start)
        block, read = acc[start : start + words], scratch.reader(words)
        for keystream, op in streams:
            op(block, read(keystream), out=block)


def add_mask(acc: RingVector, seed: bytes, sign: int) -> None:
    """``acc += sign * PRG(seed)`` in Z_{2**32}, in place."""
    add_masks(acc, [(seed, sign)])


def default_workers(length: int) -> int:
    """Threads worth using to expand masks of ``length`` words on this machine.

    Half the cores (at most 8): X25519 and the Python between AES calls hold the GIL, so
    a thread per core mostly waits, and the coordinator has other work. On a shared
    2-core machine a second thread gave no median gain (benchmarks/README.md), so 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores // 2, 8, length // _MIN_WORDS_PER_THREAD))


def add_masks_threaded(acc: RingVector, masks: Sequence[Mask], workers: int = 1) -> None:
    """``acc += sum(sign * PRG(seed))`` in Z_{2**32}, in place, on up to ``workers`` threads.

    This thread adds its share of the masks straight into ``acc``; each other thread
    derives (where a seed is a function) and expands its share into a partial vector of
    its own (no shared writes; at most 256 MiB of partials in all, so long vectors use
    fewer threads), and the partials are added at the end. An exception in any thread is
    raised here. Addition in Z_{2**32} is exact and commutative: the result does not
    depend on the number of threads.
    """
    for seed, sign in masks:
        _check(seed, sign)  # seeds still to be derived are checked when they are
    extra = min(workers - 1, len(masks) - 1, _PARTIALS_BYTES // max(1, acc.nbytes))
    if extra <= 0:
        add_masks(acc, masks)
        return
    groups = [masks[i :: extra + 1] for i in range(extra + 1)]

    def partial(group: Sequence[Mask]) -> RingVector:
        part = np.zeros(acc.shape[0], dtype=np.uint32)
        add_masks(part, group)
        return part

    with ThreadPoolExecutor(extra, thread_name_prefix="secagg-masks") as pool:
        pending = pool.map(partial, groups[1:])  # submitted now
        add_masks(acc, groups[0])
        parts = list(pending)
    for part in parts:
        np.add(acc, part, out=acc)


def mask_sum(length: int, masks: Sequence[Mask], workers: int = 1) -> RingVector:
    """``sum(sign * PRG(seed))`` over ``masks`` as a fresh vector (see above)."""
    total = np.zeros(length, dtype=np.uint32)
    add_masks_threaded(total, masks, workers)
    return total
