"""Multi-layer perceptron for tabular records and wearable-signal features."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedcare.models.stacked import stacked_linear


class MLP(nn.Module):
    """Linear-ReLU stacks; ``hidden=(64, 64)`` gives in-64-64-out."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden: Sequence[int] = (64, 64),
        dropout: float = 0.0,
        norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if norm:  # batch norm: FedBN keeps these layers at each site
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                h = stacked_linear(h, params[f"net.{i}.weight"], params[f"net.{i}.bias"])
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            elif isinstance(layer, nn.Dropout):
                h = F.dropout(h, layer.p, self.training)
            else:  # pragma: no cover - the constructor only builds the layers above
                raise TypeError(f"MLP.stacked_forward cannot run layer {type(layer).__name__}")
        return h
