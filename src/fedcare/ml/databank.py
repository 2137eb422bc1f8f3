"""All sites' rows in one tensor per split, addressed by per-site offsets.

This is a simulator convenience: it holds the sites' data in one process so batched
training can gather every site's batch with one index operation. Rows of different
sites are never mixed in a step; each site only ever reads its own offset range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from fedcare.data.base import SiteData


def site_targets(site: SiteData, split: Literal["train", "test"]) -> npt.NDArray[np.generic]:
    """What a model is trained and scored against: the int64 labels, or for survival data
    the float64 (n, 2) array of (time, event) the Cox loss and the C-index read."""
    labels = site.y_train if split == "train" else site.y_test
    times = site.time_train if split == "train" else site.time_test
    if times is None:
        return labels
    return np.stack([times, labels.astype(np.float64)], axis=1)


@dataclass
class DataBank:
    x: torch.Tensor  # (total rows, *input_shape), float32
    y: torch.Tensor  # (total rows,) int64 labels, or (total rows, 2) float64 (time, event)
    offsets: npt.NDArray[np.int64]  # first row of each site
    counts: npt.NDArray[np.int64]  # rows of each site

    @classmethod
    def from_arrays(
        cls, xs: Sequence[npt.NDArray[np.float32]], ys: Sequence[npt.NDArray[np.generic]]
    ) -> DataBank:
        counts = np.array([len(y) for y in ys], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(list(xs)), dtype=np.float32))
        targets = np.concatenate(list(ys))
        # Survival targets stay float (time, event); anything else is a class label.
        dtype = np.float64 if np.issubdtype(targets.dtype, np.floating) else np.int64
        y = torch.from_numpy(np.ascontiguousarray(targets, dtype=dtype))
        return cls(x=x, y=y, offsets=offsets, counts=counts)

    @classmethod
    def from_sites(cls, sites: Sequence[SiteData]) -> DataBank:
        """The sites' training rows and targets (labels, or survival time and event)."""
        return cls.from_arrays(
            [s.x_train for s in sites], [site_targets(s, "train") for s in sites]
        )

    def rows(self, site: int) -> slice:
        start = int(self.offsets[site])
        return slice(start, start + int(self.counts[site]))

    def site_arrays(self, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = self.rows(site)
        return self.x[sl], self.y[sl]

    @property
    def num_sites(self) -> int:
        return int(self.counts.shape[0])
