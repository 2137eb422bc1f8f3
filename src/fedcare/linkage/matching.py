"""Exact membership of 128-bit keys (pairs of uint64) with numpy: sort, search, confirm.

The label party compares fully blinded elements; their first 16 bytes are uniform, so two
different patients share them with probability n^2 / 2^128 (nil). A structured-dtype
``np.isin`` would do the same in ~5x the time, so the high word is searched numerically and
the low word confirms; the rare equal high words with different low words take a slow path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedcare.linkage.group import ELEMENT_BYTES

Keys = npt.NDArray[np.uint64]  # shape (n, 2): high word, low word
KEY_WORDS = 2


def keys_from_elements(blob: bytes) -> Keys:
    """The first 16 bytes of each 32-byte element as two native uint64 words."""
    words = np.frombuffer(blob, dtype=">u8").reshape(-1, ELEMENT_BYTES // 8)
    return words[:, :KEY_WORDS].astype(np.uint64)


def keys_from_blinded(elements: npt.NDArray[np.uint8]) -> Keys:
    """As :func:`keys_from_elements` for a (rows, 32) uint8 array, without a bytes copy."""
    words = np.ascontiguousarray(elements[:, : KEY_WORDS * 8]).view(">u8")
    return words.astype(np.uint64)


def isin(keys: Keys, among: Keys) -> npt.NDArray[np.bool_]:
    """For each row of ``keys``: is that (high, low) pair a row of ``among``."""
    if len(keys) == 0 or len(among) == 0:
        return np.zeros(len(keys), dtype=bool)
    order = np.lexsort((among[:, 1], among[:, 0]))
    high, low = among[order, 0], among[order, 1]
    left = np.searchsorted(high, keys[:, 0], side="left")
    right = np.searchsorted(high, keys[:, 0], side="right")
    found = np.zeros(len(keys), dtype=bool)
    single = right - left == 1
    found[single] = low[left[single]] == keys[single, 1]
    for i in np.flatnonzero(right - left > 1):  # shared high word: compare the low words
        found[i] = bool(np.any(low[left[i] : right[i]] == keys[i, 1]))
    return found


def sort_order(keys: Keys) -> npt.NDArray[np.intp]:
    """Row order of ``keys`` ascending by (high, low): the same order at every party."""
    return np.lexsort((keys[:, 1], keys[:, 0]))
