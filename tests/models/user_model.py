"""A hospital's own architecture, named in a config as ``tests.models.user_model:TinyNet``."""

import math

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.Tanh(),
            nn.Linear(width, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
