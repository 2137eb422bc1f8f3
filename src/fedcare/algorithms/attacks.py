"""Poisoned sites for robustness studies: which sites attack, and what they do.

Update attacks replace an honest update with a corrupted one; label flipping corrupts a
site's training labels before it trains. Everything is a pure function; randomness comes
from a numpy Generator the caller draws from the run's seed stream (purpose "attack").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError

AttackKind = Literal["sign_flip", "scale", "noise", "label_flip"]
ATTACK_KINDS: tuple[str, ...] = ("sign_flip", "scale", "noise", "label_flip")
LabelFlipMode = Literal["reverse", "permutation"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.integer]


class AttackConfigError(ConfigError, ValueError):
    """An attack is configured wrongly: a ``ConfigError`` for studies, a ``ValueError`` too."""


@dataclass(frozen=True)
class AttackSpec:
    """``fraction`` of the sites attack.

    ``strength`` is the flip factor s (sign_flip sends -s * update), the scale factor
    (scale sends s * update) or the noise standard deviation (noise sends N(0, s^2));
    label flipping ignores it.
    """

    kind: AttackKind
    fraction: float = 0.2
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise AttackConfigError(
                f"unknown attack '{self.kind}'; expected one of {', '.join(ATTACK_KINDS)}"
            )
        if not 0.0 <= self.fraction < 1.0:
            raise AttackConfigError(f"attack fraction must be in [0, 1), found {self.fraction}")
        if not 0.0 < self.strength < math.inf:
            raise AttackConfigError(
                f"attack strength must be finite and > 0, found {self.strength}"
            )


def choose_attackers(
    site_names: Sequence[str], fraction: float, rng: np.random.Generator
) -> set[str]:
    """round(fraction * n) distinct sites, half rounded up, drawn uniformly.

    Names are sorted first, so the same seed picks the same sites whatever order the
    caller lists them in.
    """
    names = sorted(site_names)
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, found {list(site_names)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attacker fraction must be in [0, 1], found {fraction}")
    # The epsilon keeps 0.29 * 100 = 28.999... from losing an attacker to float rounding.
    count = min(len(names), math.floor(fraction * len(names) + 0.5 + 1e-9))
    picked = rng.choice(len(names), size=count, replace=False)
    return {names[int(i)] for i in picked}


def _float_update(update: npt.ArrayLike) -> npt.NDArray[np.floating]:
    arr = np.asarray(update)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"an update must be a floating-point array, found dtype {arr.dtype}")
    return arr


def sign_flip(update: npt.ArrayLike, strength: float = 1.0) -> FloatArray:
    """-s * update: pushes the model uphill on the attacker's loss."""
    return (-strength * _float_update(update)).astype(np.float32)


def scale_update(update: npt.ArrayLike, factor: float) -> FloatArray:
    """factor * update: a boosted update that dominates an unweighted mean."""
    return (factor * _float_update(update)).astype(np.float32)


def gaussian_update(update: npt.ArrayLike, sigma: float, rng: np.random.Generator) -> FloatArray:
    """Replace the update with N(0, sigma^2) noise of the same shape."""
    if not 0.0 <= sigma < math.inf:
        raise ValueError(f"noise sigma must be finite and >= 0, found {sigma}")
    shape = _float_update(update).shape
    return rng.normal(0.0, sigma, size=shape).astype(np.float32)


def attack_update(delta: FloatArray, spec: AttackSpec, rng: np.random.Generator) -> FloatArray:
    """The update an attacking site sends instead of ``delta``.

    Label flipping acts on the data before training, so its update passes unchanged.
    """
    if spec.kind == "sign_flip":
        return sign_flip(delta, spec.strength)
    if spec.kind == "scale":
        return scale_update(delta, spec.strength)
    if spec.kind == "noise":
        return gaussian_update(delta, spec.strength, rng)
    return delta


def label_permutation(num_classes: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """A uniformly random derangement of the classes: every label moves to another one."""
    if num_classes < 2:
        raise ValueError(f"label flipping needs at least 2 classes, found {num_classes}")
    # Rejection sampling: about 1/e of permutations are derangements, so ~3 draws on average.
    while True:
        perm = rng.permutation(num_classes)
        if not np.any(perm == np.arange(num_classes)):
            return perm.astype(np.int64)


def flip_labels(
    labels: IntArray,
    num_classes: int,
    *,
    mode: LabelFlipMode = "reverse",
    rng: np.random.Generator | None = None,
) -> IntArray:
    """Corrupt integer class labels; the result has the input's dtype.

    ``reverse`` maps y to (C - 1) - y (1 - y for binary labels; with odd C the middle class
    stays put). ``permutation`` applies one random derangement drawn from ``rng``.
    """
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, found dtype {y.dtype}")
    if num_classes < 2:
        raise ValueError(f"label flipping needs at least 2 classes, found {num_classes}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], found range [{y.min()}, {y.max()}]"
        )
    if mode == "reverse":
        mapping = np.arange(num_classes - 1, -1, -1, dtype=np.int64)
    elif mode == "permutation":
        if rng is None:
            raise ValueError("label flipping by permutation needs an rng")
        mapping = label_permutation(num_classes, rng)
    else:
        raise ValueError(f"unknown label flip mode '{mode}'; expected 'reverse' or 'permutation'")
    flipped: IntArray = mapping[y].astype(y.dtype)
    return flipped
