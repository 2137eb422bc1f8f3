"""L2 clipping of a flat update: the one place every clip in fedcare goes through.

Used by the ``clip`` upload stage, by DP-FedAvg's sensitivity bound and by norm-bounded
aggregation, so "clipped to C" means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, UpdateRejectedError
from fedcare.core.vectors import FloatVector

# Clipped vectors are scaled to C / (1 + margin): float32 rounding of the scaled entries
# (relative error ~6e-8 each) can then never push the norm above C.
CLIP_MARGIN = 1e-6


@dataclass(frozen=True)
class ClipResult:
    vector: FloatVector
    norm: float  # L2 norm before clipping
    clipped: bool  # True if the vector was scaled down


def check_update(update: npt.ArrayLike, *, what: str = "update") -> FloatVector:
    """``update`` as a 1-D finite float32 vector, or UpdateRejectedError saying why not."""
    vec = np.asarray(update)
    if vec.ndim != 1:
        raise UpdateRejectedError(f"{what}: expected a flat vector, found shape {vec.shape}")
    if vec.dtype != np.float32:
        raise UpdateRejectedError(f"{what}: expected dtype float32, found {vec.dtype}")
    if not np.isfinite(vec).all():
        raise UpdateRejectedError(f"{what}: contains NaN or infinite values")
    return vec


def check_clip_norm(clip_norm: float) -> None:
    if not (clip_norm > 0):  # also rejects NaN; +inf means "no clipping" (not private)
        raise ConfigError(f"clip norm must be > 0, found {clip_norm}")


def l2_clip(update: npt.ArrayLike, clip_norm: float) -> ClipResult:
    """Scale ``update`` so its L2 norm is at most ``clip_norm``; report whether it did."""
    check_clip_norm(clip_norm)
    vec = check_update(update)
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if norm <= clip_norm:
        return ClipResult(vec.copy(), norm, False)
    scale = clip_norm / (norm * (1.0 + CLIP_MARGIN))
    return ClipResult((vec * np.float32(scale)).astype(np.float32), norm, True)
