"""Evaluate a flat parameter vector on a site's test rows; returns additive EvalStats."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.core.metrics import EvalStats
from fedcare.core.vectors import ParamLayout
from fedcare.ml.losses import (
    cox_neg_log_likelihood,
    is_survival_target,
    per_sample_loss,
    probabilities,
)
from fedcare.ml.torch_adapter import load_vector


@torch.no_grad()
def predict(
    module: nn.Module, x: torch.Tensor, num_classes: int, chunk: int = 8192
) -> tuple[npt.NDArray[np.float64], torch.Tensor]:
    """Probabilities (numpy) and raw logits for ``x`` with the module's current weights."""
    module.eval()
    logits = (
        torch.cat([module(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        if len(x)
        else None
    )
    if logits is None:
        shape = (0,) if num_classes == 2 else (0, num_classes)
        return np.zeros(shape), torch.zeros((0, 1 if num_classes == 2 else num_classes))
    return probabilities(logits, num_classes).double().numpy(), logits


@torch.no_grad()
def predict_risk(module: nn.Module, x: torch.Tensor, chunk: int = 8192) -> npt.NDArray[np.float64]:
    """A survival model's risk scores (its one output) for ``x``."""
    module.eval()
    if not len(x):
        return np.zeros(0)
    out = torch.cat([module(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
    return out[:, 0].double().numpy()


@torch.no_grad()
def evaluate_vector(
    module: nn.Module,
    layout: ParamLayout,
    vector: npt.NDArray[np.float32],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
) -> EvalStats:
    """Load ``vector`` into ``module`` and count its predictions on (x, y).

    Survival targets (time, event) are scored by concordance (Harrell's C-index counts)
    and the Cox negative log partial likelihood of the whole test set (Efron ties).
    """
    load_vector(module, vector, layout)
    if is_survival_target(y):
        risk = predict_risk(module, x)
        time, event = y[:, 0].numpy(), y[:, 1].numpy()
        loss_sum = cox_neg_log_likelihood(risk, time, event)
        return EvalStats.from_survival(risk, time, event, loss_sum, num_classes)
    probs, logits = predict(module, x, num_classes)
    losses = per_sample_loss(logits, y, num_classes).double().numpy() if len(y) else np.zeros(0)
    return EvalStats.from_predictions(probs, y.numpy(), losses, num_classes)
