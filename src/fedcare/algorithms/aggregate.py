"""Aggregation maths: pure functions over arrays, and a streaming accumulator.

Nothing here sees a site id, a message or a socket. The accumulator keeps one running
sum per quantity, so memory does not grow with the number of sites.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedcare.core.vectors import FloatVector

Weighting = Literal["samples", "uniform"]


def weighted_mean(vectors: Sequence[FloatVector], weights: Sequence[float]) -> FloatVector:
    """sum_k w_k v_k / sum_k w_k, computed in float64 and returned as float32."""
    if len(vectors) == 0:
        raise ValueError("weighted_mean needs at least one vector")
    if len(vectors) != len(weights):
        raise ValueError(f"{len(vectors)} vectors but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"weights must be finite, non-negative and not all zero, found {w.tolist()}"
        )
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    result: npt.NDArray[np.float64] = (w[:, None] * stacked).sum(axis=0) / w.sum()
    return result.astype(np.float32)


def aggregation_weight(num_samples: int, weighting: Weighting) -> float:
    """n_k for FedAvg's n_k/n weighting, 1 for uniform."""
    if weighting == "samples":
        return float(num_samples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting '{weighting}'; expected 'samples' or 'uniform'")


@dataclass
class Aggregate:
    """Result of one round's aggregation."""

    delta: FloatVector  # weighted mean of the deltas
    extras: dict[str, FloatVector]  # uniform mean of each extra (SCAFFOLD control deltas)
    total_weight: float
    count: int


_BLOCK = 1 << 20  # values per block when adding one update (8 MB of float64 scratch)


@dataclass
class StreamingMean:
    """Running weighted sum of deltas and uniform sums of extras, in float64.

    ``add`` may be called with single updates or with stacked blocks of updates (as the
    batched simulator produces them); the result is the same.
    """

    size: int
    _sum: npt.NDArray[np.float64] = field(init=False)
    _extras: dict[str, npt.NDArray[np.float64]] = field(init=False, default_factory=dict)
    total_weight: float = field(init=False, default=0.0)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._sum = np.zeros(self.size, dtype=np.float64)

    def add(
        self, delta: FloatVector, weight: float, extras: dict[str, FloatVector] | None = None
    ) -> None:
        if delta.shape != (self.size,):
            raise ValueError(f"delta has shape {delta.shape}, expected ({self.size},)")
        if weight < 0 or not np.isfinite(weight):
            raise ValueError(f"aggregation weight must be finite and >= 0, found {weight}")
        # Block by block, so a large model never needs a full-size float64 temporary.
        for start in range(0, self.size, _BLOCK):
            part = slice(start, start + _BLOCK)
            self._sum[part] += weight * delta[part].astype(np.float64)
        self.total_weight += float(weight)
        self.count += 1
        for name, value in (extras or {}).items():
            acc = self._extras.get(name)
            if acc is None:
                acc = self._extras[name] = np.zeros(value.shape, dtype=np.float64)
            acc += value

    def add_block(
        self,
        deltas: npt.NDArray[np.float32],
        weights: npt.NDArray[np.float64],
        extras: dict[str, npt.NDArray[np.float32]] | None = None,
    ) -> None:
        """Add K stacked updates at once: ``deltas`` has shape (K, size)."""
        if deltas.ndim != 2 or deltas.shape[1] != self.size:
            raise ValueError(f"deltas block has shape {deltas.shape}, expected (K, {self.size})")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (deltas.shape[0],) or np.any(w < 0) or not np.isfinite(w).all():
            raise ValueError("block weights must be one finite, non-negative value per update")
        self._sum += w @ deltas.astype(np.float64)
        self.total_weight += float(w.sum())
        self.count += int(deltas.shape[0])
        self._add_extras(extras or {})

    def add_chunk(self, offset: int, values: FloatVector, weight: float) -> None:
        """Add ``weight * values`` at ``offset`` of the sum: one piece of one update.

        The update is counted by :meth:`count_update` once all of its pieces are in;
        element by element this is exactly :meth:`add`.
        """
        if offset < 0 or values.ndim != 1 or offset + values.size > self.size:
            raise ValueError(
                f"chunk of {values.size} values at offset {offset} does not fit an update "
                f"of {self.size} values"
            )
        part = slice(offset, offset + values.size)
        self._sum[part] += weight * values.astype(np.float64)

    def count_update(self, weight: float, extras: dict[str, FloatVector] | None = None) -> None:
        """Close one update added piece by piece with :meth:`add_chunk`."""
        if weight < 0 or not np.isfinite(weight):
            raise ValueError(f"aggregation weight must be finite and >= 0, found {weight}")
        self.total_weight += float(weight)
        self.count += 1
        self._add_extras({k: v[None, :] for k, v in (extras or {}).items()})

    def merge(self, other: StreamingMean) -> None:
        """Fold in another accumulator's partial sums (another worker's sites)."""
        if other.size != self.size:
            raise ValueError(f"cannot merge a mean over {other.size} values into {self.size}")
        self._sum += other._sum
        self.total_weight += other.total_weight
        self.count += other.count
        for name, value in other._extras.items():
            acc = self._extras.get(name)
            if acc is None:
                self._extras[name] = value.copy()
            else:
                acc += value

    def _add_extras(self, extras: dict[str, npt.NDArray[np.float32]]) -> None:
        for name, value in extras.items():
            acc = self._extras.get(name)
            if acc is None:
                acc = self._extras[name] = np.zeros(value.shape[1:], dtype=np.float64)
            acc += value.astype(np.float64).sum(axis=0)

    def result(self) -> Aggregate:
        if self.count == 0 or self.total_weight <= 0:
            raise ValueError("no update with positive weight was aggregated this round")
        return Aggregate(
            delta=(self._sum / self.total_weight).astype(np.float32),
            extras={k: (v / self.count).astype(np.float32) for k, v in self._extras.items()},
            total_weight=self.total_weight,
            count=self.count,
        )
