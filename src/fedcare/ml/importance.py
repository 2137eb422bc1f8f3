"""Permutation feature importance, computed at each site and combined at the coordinator.

At a site, each feature column of the local test rows is shuffled (within the site, so no
row leaves it) and the model re-scored. The site shares counts only: correct predictions
and loss sums, unshuffled and shuffled. Summing the counts over sites gives the importance
on all sites' test rows together, exactly as if they had been pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.core.vectors import ParamLayout
from fedcare.ml.losses import per_sample_loss, probabilities
from fedcare.ml.torch_adapter import load_vector


@dataclass
class ImportanceCounts:
    """Additive counts for one model on one or more sites' test rows."""

    rows: int
    base_correct: float
    base_loss: float
    permuted_correct: npt.NDArray[np.float64]  # per feature, averaged over repeats
    permuted_loss: npt.NDArray[np.float64]

    def __add__(self, other: ImportanceCounts) -> ImportanceCounts:
        return ImportanceCounts(
            self.rows + other.rows,
            self.base_correct + other.base_correct,
            self.base_loss + other.base_loss,
            self.permuted_correct + other.permuted_correct,
            self.permuted_loss + other.permuted_loss,
        )

    @property
    def accuracy_drop(self) -> npt.NDArray[np.float64]:
        """How much accuracy falls when each feature is shuffled (higher = more important)."""
        return (self.base_correct - self.permuted_correct) / max(self.rows, 1)

    @property
    def loss_increase(self) -> npt.NDArray[np.float64]:
        return (self.permuted_loss - self.base_loss) / max(self.rows, 1)


@torch.no_grad()
def _score(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[float, float]:
    logits = module(x)
    probs = probabilities(logits, num_classes)
    predicted = (probs >= 0.5).long() if num_classes == 2 else probs.argmax(dim=1)
    correct = float((predicted == y).sum())
    loss = float(per_sample_loss(logits, y, num_classes).sum())
    return correct, loss


@torch.no_grad()
def site_importance(
    module: nn.Module,
    layout: ParamLayout,
    params: npt.NDArray[np.float32],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    rng: np.random.Generator,
    repeats: int = 5,
) -> ImportanceCounts:
    """Runs at a site over its own test rows (tabular inputs: one column per feature)."""
    if x.ndim != 2:
        raise ValueError(
            f"permutation importance needs tabular inputs (rows x features), found shape {tuple(x.shape)}"
        )
    load_vector(module, params, layout)
    module.eval()
    n, features = x.shape
    base_correct, base_loss = _score(module, x, y, num_classes)
    permuted_correct = np.zeros(features)
    permuted_loss = np.zeros(features)
    for j in range(features):
        for _ in range(repeats):
            shuffled = x.clone()
            shuffled[:, j] = x[torch.from_numpy(rng.permutation(n)), j]
            correct, loss = _score(module, shuffled, y, num_classes)
            permuted_correct[j] += correct / repeats
            permuted_loss[j] += loss / repeats
    return ImportanceCounts(n, base_correct, base_loss, permuted_correct, permuted_loss)
