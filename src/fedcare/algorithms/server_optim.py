"""Server optimizers from "Adaptive Federated Optimization" (Reddi et al., ICLR 2021).

The aggregated client delta is treated as a pseudo-gradient step Δ (it already points
downhill). Each optimizer is a pure function ``(params, Δ, moments) -> (params, moments)``
so FedAdam is FedAvg plus :func:`adam_step`, FedYogi plus :func:`yogi_step`, and so on.
Moments live in :class:`~fedcare.core.records.ServerState` under ``opt/…`` and are checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedcare.core.vectors import FloatVector

ServerOptimizerName = Literal["sgd", "adam", "yogi", "adagrad"]
Moments = dict[str, FloatVector]


@dataclass(frozen=True)
class ServerOptimizer:
    """Hyper-parameters of the server step. ``sgd`` with lr 1 and momentum 0 is plain FedAvg."""

    name: ServerOptimizerName = "sgd"
    lr: float = 1.0
    momentum: float = 0.0  # FedAvgM when > 0 (sgd only)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity; also the initial sqrt(v) as in the paper

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adam", "yogi", "adagrad"):
            raise ValueError(
                f"unknown server optimizer '{self.name}'; expected sgd, adam, yogi or adagrad"
            )
        if self.lr <= 0:
            raise ValueError(f"server lr must be > 0, found {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"server momentum must be in [0, 1), found {self.momentum}")

    def init(self, size: int) -> Moments:
        if self.name == "sgd":
            return {"opt/v": np.zeros(size, dtype=np.float32)} if self.momentum > 0 else {}
        v0 = np.full(size, self.tau**2, dtype=np.float32)
        if self.name == "adagrad":
            return {"opt/v": v0}
        return {"opt/m": np.zeros(size, dtype=np.float32), "opt/v": v0}

    def step(
        self, params: FloatVector, delta: FloatVector, moments: Moments
    ) -> tuple[FloatVector, Moments]:
        if self.name == "sgd":
            return sgd_step(params, delta, moments, lr=self.lr, momentum=self.momentum)
        if self.name == "adagrad":
            return adagrad_step(params, delta, moments, lr=self.lr, tau=self.tau)
        if self.name == "adam":
            return adam_step(
                params, delta, moments, lr=self.lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau
            )
        return yogi_step(
            params, delta, moments, lr=self.lr, beta1=self.beta1, beta2=self.beta2, tau=self.tau
        )


def sgd_step(
    params: FloatVector, delta: FloatVector, moments: Moments, *, lr: float, momentum: float
) -> tuple[FloatVector, Moments]:
    """x += lr * Δ, or with momentum (FedAvgM, Hsu et al. 2019): v = β v + Δ; x += lr * v."""
    if momentum > 0:
        v = (momentum * moments["opt/v"] + delta).astype(np.float32)
        return (params + lr * v).astype(np.float32), {"opt/v": v}
    return (params + lr * delta).astype(np.float32), {}


def adagrad_step(
    params: FloatVector, delta: FloatVector, moments: Moments, *, lr: float, tau: float
) -> tuple[FloatVector, Moments]:
    """FedAdagrad: v = v + Δ²; x += lr * Δ / (sqrt(v) + τ)."""
    v = (moments["opt/v"] + delta * delta).astype(np.float32)
    return (params + lr * delta / (np.sqrt(v) + tau)).astype(np.float32), {"opt/v": v}


def adam_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[FloatVector, Moments]:
    """FedAdam: m = β1 m + (1-β1) Δ; v = β2 v + (1-β2) Δ²; x += lr * m / (sqrt(v) + τ)."""
    m = (beta1 * moments["opt/m"] + (1 - beta1) * delta).astype(np.float32)
    v = (beta2 * moments["opt/v"] + (1 - beta2) * delta * delta).astype(np.float32)
    return (params + lr * m / (np.sqrt(v) + tau)).astype(np.float32), {"opt/m": m, "opt/v": v}


def yogi_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[FloatVector, Moments]:
    """FedYogi: like Adam but v -= (1-β2) Δ² sign(v - Δ²), so v grows more carefully."""
    m = (beta1 * moments["opt/m"] + (1 - beta1) * delta).astype(np.float32)
    d2 = delta * delta
    v = (moments["opt/v"] - (1 - beta2) * d2 * np.sign(moments["opt/v"] - d2)).astype(np.float32)
    return (params + lr * m / (np.sqrt(v) + tau)).astype(np.float32), {"opt/m": m, "opt/v": v}
