"""Evaluate models on every site's own test rows (the simulator's evaluation round)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.core.metrics import EvalStats
from fedcare.core.vectors import ParamLayout
from fedcare.data.base import FederatedDataset
from fedcare.ml.databank import site_targets
from fedcare.ml.evaluate import evaluate_vector


class TestSets:
    """Each site's test rows as tensors, converted once per study."""

    __test__ = False  # not a pytest class

    def __init__(self, dataset: FederatedDataset) -> None:
        self.names = dataset.site_names
        self.num_classes = dataset.num_classes
        self._x = [torch.from_numpy(s.x_test) for s in dataset.sites]
        self._y = [torch.from_numpy(site_targets(s, "test")) for s in dataset.sites]

    def evaluate_global(
        self, module: nn.Module, layout: ParamLayout, params: npt.NDArray[np.float32]
    ) -> dict[str, EvalStats]:
        """One model on every site's test set."""
        return {
            name: evaluate_vector(module, layout, params, x, y, self.num_classes)
            for name, x, y in zip(self.names, self._x, self._y, strict=True)
        }

    def evaluate_own(
        self, module: nn.Module, layout: ParamLayout, params: Sequence[npt.NDArray[np.float32]]
    ) -> dict[str, EvalStats]:
        """Site k's own model on site k's test set (local-only and personalised models)."""
        return {
            name: evaluate_vector(module, layout, p, x, y, self.num_classes)
            for name, p, x, y in zip(self.names, params, self._x, self._y, strict=True)
        }


def pooled(stats: dict[str, EvalStats]) -> EvalStats:
    """Sum per-site counts: exact pooled accuracy, histogram-based pooled AUC."""
    values = list(stats.values())
    total = values[0]
    for s in values[1:]:
        total = total + s
    return total
