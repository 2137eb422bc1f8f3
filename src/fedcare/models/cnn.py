"""A small CNN for 28x28 medical images (MedMNIST)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv16-pool-conv32-pool-fc64-out. Without ``norm`` it has no buffers, so sites batch
    together under vmap; with ``norm`` (batch norm, for FedBN) it trains sequentially."""

    def __init__(
        self, input_shape: tuple[int, ...], num_outputs: int, width: int = 16, norm: bool = False
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"SmallCNN expects (channels, height, width) inputs, found {input_shape}"
            )
        channels, height, width_px = input_shape

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)]
            if norm:  # FedBN keeps batch-norm layers local to each site
                conv.append(nn.BatchNorm2d(c_out))
            return [*conv, nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(channels, width), *block(width, 2 * width))
        flat = 2 * width * (height // 4) * (width_px // 4)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
