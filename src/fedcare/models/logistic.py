"""Logistic regression: one linear layer over the flattened input."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcare.models.stacked import stacked_linear


class LogisticRegression(nn.Module):
    """One output logit for binary tasks, one per class otherwise."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return stacked_linear(x.flatten(2), params["linear.weight"], params["linear.bias"])
