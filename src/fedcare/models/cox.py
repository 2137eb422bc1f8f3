"""The linear Cox model's risk score, x . beta, as a trainable module.

A study names it by import path, ``model: {name: "fedcare.models.cox:LinearRisk"}`` (the
registry's short names stay the classification models').
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedcare.core.errors import ConfigError
from fedcare.models.stacked import stacked_linear


class LinearRisk(nn.Module):
    """A linear risk score without intercept, starting from beta = 0.

    The partial likelihood cannot see an intercept (it cancels between an event and its
    risk set), so there is none to train. Every run starts from the null model, every
    patient the same risk, where a Newton fit of the Cox model starts too: the run's seed
    then only orders the batches, instead of also drawing a random first model.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        if num_outputs != 1:
            raise ConfigError(
                f"model LinearRisk is a survival risk score with one output; this dataset "
                f"needs {num_outputs} outputs (a classification task): use 'logistic'"
            )
        self.weight = nn.Parameter(torch.zeros(1, math.prod(input_shape)))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return stacked_linear(x.flatten(2), params["weight"], None)
