"""Stacked forward passes: K copies of a model with different weights in one computation.

A model that defines ``stacked_forward(params, x)`` (params shaped (K, *shape), inputs
(K, batch, ...)) trains many sites with batched matrix products; this is several times
faster than ``torch.func.vmap`` for the small dense models typical of clinical tabular
data. Models without it (convolutions, user modules) use vmap; both are tested equal to
the sequential PyTorch loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class StackedForward(Protocol):
    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (K, batch, outputs) for K stacked parameter sets."""
        ...


def stacked_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (K, B, in) @ weight (K, out, in)^T + bias (K, out) -> (K, B, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
