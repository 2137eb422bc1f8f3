"""A small CNN for 28x28 medical images (MedMNIST)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv16-pool-conv32-pool-fc64-out. No batch norm, so sites batch together under vmap
    (FedBN-style local normalisation layers come with the personalisation work)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"SmallCNN expects (channels, height, width) inputs, found {input_shape}"
            )
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (height // 4) * (width_px // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
