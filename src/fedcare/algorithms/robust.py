"""Byzantine-robust aggregation rules: pure functions over a stack of K site updates.

Every rule has one signature, ``(updates (K, P) float32, weights (K,) float64) -> (P,)
float32``, so the round loop can swap them. Rules from the robustness literature
(median, trimmed mean, Krum) ignore the weights on purpose: a Byzantine site can lie
about its sample count, so letting it buy influence would defeat the rule. The weights are
still validated, and used where the rule averages sites it has already accepted
(Multi-Krum's selected set, norm bounding, the plain mean).

Work over the P coordinates is done in column blocks so a (200, 1e6) stack never needs a
second full-size copy in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError
from fedcare.core.vectors import FloatVector

Updates = npt.NDArray[np.float32]
Weights = npt.NDArray[np.float64]
RobustAggregator = Callable[[Updates, Weights], FloatVector]
RobustRule = RobustAggregator  # the name the strategy layer first used

ROBUST_RULES: tuple[str, ...] = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "norm_bound",
)


class RobustRuleError(ConfigError, ValueError):
    """A rule's parameters do not fit (unknown rule, bad beta, too few sites for Krum's f).

    A ``ConfigError`` for the study layer and a ``ValueError`` for callers of the maths.
    """


# About 4M values (16 MB of float32) per column block: big enough for BLAS and partition
# to run at full speed, small enough to stay cache- and memory-friendly.
_BLOCK_VALUES = 1 << 22


def check_updates(updates: npt.ArrayLike, weights: npt.ArrayLike) -> tuple[Updates, Weights]:
    """Validate a stack of updates and their weights; return them as float32 / float64."""
    u = np.asarray(updates)
    if u.ndim != 2 or u.shape[0] == 0 or u.shape[1] == 0:
        raise ValueError(
            f"updates must be a non-empty 2-D array of shape (sites, parameters), found shape {u.shape}"
        )
    if not np.issubdtype(u.dtype, np.floating):
        raise ValueError(f"updates must be floating point, found dtype {u.dtype}")
    u32 = np.asarray(u, dtype=np.float32)
    # A row's float64 sum is finite iff every entry is (float32 values cannot overflow it),
    # which avoids a full-size boolean temporary.
    bad = np.flatnonzero(~np.isfinite(u32.sum(axis=1, dtype=np.float64)))
    if bad.size:
        raise ValueError(
            f"updates at rows {bad.tolist()} contain NaN or inf; reject those sites before aggregating"
        )
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (u32.shape[0],):
        raise ValueError(f"expected {u32.shape[0]} weights (one per update), found shape {w.shape}")
    if not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"weights must be finite, non-negative and not all zero, found {w.tolist()}"
        )
    return u32, w


def _column_blocks(num_rows: int, num_cols: int) -> Iterator[slice]:
    step = max(1, _BLOCK_VALUES // num_rows)
    for start in range(0, num_cols, step):
        yield slice(start, min(start + step, num_cols))


def _weighted_sum(coef: npt.NDArray[np.float64], updates: Updates) -> FloatVector:
    """sum_k coef_k * updates_k in float64, block by block, returned as float32."""
    out = np.empty(updates.shape[1], dtype=np.float32)
    for cols in _column_blocks(*updates.shape):
        out[cols] = coef @ updates[:, cols].astype(np.float64)
    return out


def _sorted_block(updates: Updates, cols: slice, kth: tuple[int, ...] | None) -> Updates:
    """Columns ``cols`` as a contiguous (B, K) block, partitioned (or sorted) along K."""
    block = np.ascontiguousarray(updates[:, cols].T)
    if kth is None:
        block.sort(axis=1)
    else:
        block.partition(kth, axis=1)
    return block


@dataclass(frozen=True)
class WeightedMean:
    """Plain FedAvg mean, sum_k w_k u_k / sum_k w_k: the non-robust baseline."""

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, w = check_updates(updates, weights)
        return _weighted_sum(w / w.sum(), u)


@dataclass(frozen=True)
class CoordinateMedian:
    """Coordinate-wise median (Yin et al. 2018); ``weighted=True`` uses the weights.

    The weighted median of a coordinate is the value where the cumulative weight of the
    sorted values crosses half the total; when it lands exactly on half, the two
    neighbouring values are averaged, so equal weights give the ordinary median.
    """

    weighted: bool = False

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, w = check_updates(updates, weights)
        k = u.shape[0]
        out = np.empty(u.shape[1], dtype=np.float32)
        if not self.weighted:
            lo, hi = (k - 1) // 2, k // 2
            for cols in _column_blocks(*u.shape):
                block = _sorted_block(u, cols, (lo, hi))
                out[cols] = (block[:, lo].astype(np.float64) + block[:, hi]) / 2
            return out
        total = w.sum()
        for cols in _column_blocks(*u.shape):
            block = u[:, cols].T
            order = np.argsort(block, axis=1, kind="stable")
            values = np.take_along_axis(block, order, axis=1).astype(np.float64)
            twice_cum = 2 * np.cumsum(w[order], axis=1)
            # First sorted position whose cumulative weight reaches / passes half the total.
            lower = np.argmax(twice_cum >= total, axis=1)[:, None]
            upper = np.argmax(twice_cum > total, axis=1)[:, None]
            median = (
                np.take_along_axis(values, lower, axis=1)
                + np.take_along_axis(values, upper, axis=1)
            ) / 2
            out[cols] = median[:, 0]
        return out


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018).

    Per coordinate, drop the floor(beta * K) largest and smallest values and average the
    rest (unweighted). With fewer than 1 / beta sites nothing is trimmed.
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and 0.0 <= self.beta < 0.5):
            raise RobustRuleError(
                f"trimmed mean needs 0 <= beta < 0.5 (per side), found {self.beta}"
            )

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, _ = check_updates(updates, weights)
        k = u.shape[0]
        trim = int(np.floor(self.beta * k))
        out = np.empty(u.shape[1], dtype=np.float32)
        for cols in _column_blocks(*u.shape):
            block = _sorted_block(u, cols, (trim, k - trim - 1)) if trim else u[:, cols].T
            out[cols] = block[:, trim : k - trim].mean(axis=1, dtype=np.float64)
        return out


def pairwise_sq_distances(updates: Updates) -> npt.NDArray[np.float64]:
    """(K, K) squared Euclidean distances from one Gram matrix, in float64.

    Rows are centred on their mean first: ||a||^2 + ||b||^2 - 2ab cancels badly when the
    updates are close to each other but far from the origin.
    """
    k = updates.shape[0]
    center = updates.mean(axis=0, dtype=np.float64)
    gram = np.zeros((k, k), dtype=np.float64)
    for cols in _column_blocks(*updates.shape):
        block = updates[:, cols].astype(np.float64) - center[cols]
        gram += block @ block.T
    sq_norms = np.diag(gram)
    dist = sq_norms[:, None] + sq_norms[None, :] - 2 * gram
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)


def krum_select(updates: Updates, f: int, m: int) -> npt.NDArray[np.intp]:
    """Indices of the m updates with the lowest Krum scores (Blanchard et al. 2017).

    Score of update i: sum of squared distances to its K - f - 2 nearest other updates.
    Ties go to the lower index.
    """
    k = updates.shape[0]
    f = _count("Krum's number of Byzantine sites f", f, 0)
    m = _count("Multi-Krum's number selected m", m, 1)
    if k <= 2 * f + 2:
        raise RobustRuleError(
            f"Krum with f={f} Byzantine sites needs more than 2f+2 = {2 * f + 2} updates, "
            f"found {k}; lower f or wait for more sites"
        )
    if not 1 <= m <= k - f:
        raise RobustRuleError(f"Multi-Krum needs 1 <= m <= K - f = {k - f}, found m={m}")
    dist = pairwise_sq_distances(updates)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : k - f - 2]
    scores = nearest.sum(axis=1)
    return np.argsort(scores, kind="stable")[:m]


def _count(name: str, value: object, minimum: int) -> int:
    """An integer parameter; integral floats are accepted because YAML/JSON configs yield them."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise RobustRuleError(f"{name} must be an integer, found {value!r}")
    if int(value) < minimum:
        raise RobustRuleError(f"{name} must be >= {minimum}, found {value}")
    return int(value)


@dataclass(frozen=True)
class Krum:
    """Krum: the single update closest to its K - f - 2 nearest neighbours."""

    f: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "f", _count("Krum's number of Byzantine sites f", self.f, 0))

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, _ = check_updates(updates, weights)
        best: FloatVector = u[int(krum_select(u, self.f, 1)[0])].copy()
        return best


@dataclass(frozen=True)
class MultiKrum:
    """Multi-Krum: weighted mean of the m best-scored updates (m=None means K - f)."""

    f: int
    m: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "f", _count("Krum's number of Byzantine sites f", self.f, 0))
        if self.m is not None:
            object.__setattr__(self, "m", _count("Multi-Krum's number selected m", self.m, 1))

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, w = check_updates(updates, weights)
        chosen = krum_select(u, self.f, u.shape[0] - self.f if self.m is None else self.m)
        w_sel = w[chosen]
        if w_sel.sum() <= 0:
            raise ValueError(
                f"every update Multi-Krum selected (rows {sorted(chosen.tolist())}) has weight 0"
            )
        return _weighted_sum(w_sel / w_sel.sum(), u[chosen])


@dataclass(frozen=True)
class NormBound:
    """Norm bounding (Sun et al. 2019): scale each update to L2 norm <= max_norm, then mean."""

    max_norm: float

    def __post_init__(self) -> None:
        if not (isinstance(self.max_norm, int | float) and 0 < self.max_norm < np.inf):
            raise RobustRuleError(
                f"norm bound max_norm must be finite and > 0, found {self.max_norm}"
            )

    def __call__(self, updates: Updates, weights: Weights) -> FloatVector:
        u, w = check_updates(updates, weights)
        norms = np.sqrt(np.einsum("kp,kp->k", u, u, dtype=np.float64))
        factor = np.minimum(1.0, self.max_norm / np.maximum(norms, np.finfo(np.float64).tiny))
        return _weighted_sum(w * factor / w.sum(), u)


def build_robust_aggregator(name: str, **params: Any) -> RobustAggregator:
    """Build a rule by name: ``build_robust_aggregator("krum", f=2)``."""
    factories: dict[str, Callable[..., RobustAggregator]] = {
        "mean": WeightedMean,
        "median": CoordinateMedian,
        "trimmed_mean": TrimmedMean,
        "krum": Krum,
        "multi_krum": MultiKrum,
        "norm_bound": NormBound,
    }
    if name not in factories:
        raise RobustRuleError(
            f"unknown robust aggregation rule '{name}'; known: {', '.join(ROBUST_RULES)}"
        )
    try:
        return factories[name](**params)
    except TypeError as exc:
        raise RobustRuleError(f"bad parameters {params} for robust rule '{name}': {exc}") from exc
