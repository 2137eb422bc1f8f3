"""Per-sample losses and predicted probabilities for the two task kinds."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary: BCE on the single logit; multiclass: cross-entropy. Shape = labels' shape."""
    if num_classes == 2:
        return F.binary_cross_entropy_with_logits(
            logits[..., 0], labels.to(logits.dtype), reduction="none"
        )
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return flat.view(labels.shape)


def probabilities(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary: (batch,) P(class 1); multiclass: (batch, C) softmax."""
    if num_classes == 2:
        return torch.sigmoid(logits[..., 0])
    return torch.softmax(logits, dim=-1)
