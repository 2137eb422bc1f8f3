"""Server optimizers from "Adaptive Federated Optimization" (Reddi et al., ICLR 2021).

The aggregated client delta is treated as a pseudo-gradient step Δ (it already points
downhill). Each optimizer is a pure function ``(params, Δ, moments) -> (params, moments)``
so FedAdam is FedAvg plus :func:`adam_step`, FedYogi plus :func:`yogi_step`, and so on.
Each is evaluated block by block (:func:`by_blocks`): a server step on a large model then
holds its new arrays and one block of temporaries, not several model-sized ones, and a
caller done with the round's mean can have the new model written over it (``into``).
Moments live in :class:`~fedcare.core.records.ServerState` under ``opt/…`` and are checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
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
        self,
        params: FloatVector,
        delta: FloatVector,
        moments: Moments,
        *,
        into: FloatVector | None = None,
    ) -> tuple[FloatVector, Moments]:
        """The new params and moments; ``into`` receives the new params (see :func:`by_blocks`)."""
        if self.name == "sgd":
            return sgd_step(params, delta, moments, lr=self.lr, momentum=self.momentum, into=into)
        if self.name == "adagrad":
            return adagrad_step(params, delta, moments, lr=self.lr, tau=self.tau, into=into)
        betas = {"beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}
        if self.name == "adam":
            return adam_step(params, delta, moments, lr=self.lr, into=into, **betas)
        return yogi_step(params, delta, moments, lr=self.lr, into=into, **betas)


# Elements per block of a server step: every temporary of the formulas below is one block
# (1 MiB of float32), not one model, so a 100 MB model's step allocates only its outputs.
BLOCK_ELEMENTS = 1 << 18


def by_blocks(
    formula: Callable[..., tuple[FloatVector, ...]],
    *inputs: FloatVector,
    into: FloatVector | None = None,
) -> tuple[FloatVector, ...]:
    """Evaluate an element-wise ``formula`` block by block into fresh float32 outputs.

    The inputs are left untouched (a step returns new arrays, as the run state is
    immutable), except ``into``: when given, the first output (the new model) is written
    there instead of into a fresh array. A caller that owns a float32 vector it needs no
    more (the round's mean, spent by the server step) saves one model-sized array that
    way; ``into`` may be one of the inputs, since each block is read whole before the
    same block of ``into`` is written. Every operation the optimizers use (+, *, /, sqrt,
    sign, float32 casts) is correctly rounded per element, so the outputs are
    bit-identical to evaluating ``formula`` on the whole vectors at once.
    """
    size = len(inputs[0])
    if into is not None and (into.dtype != np.float32 or into.shape != (size,)):
        raise ValueError(
            f"the step's output must be a float32 vector of {size} values, found "
            f"{into.dtype} of shape {into.shape}"
        )
    outputs: tuple[FloatVector, ...] | None = None
    for start in range(0, size, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, size)
        results = formula(*(x[start:stop] for x in inputs))
        if outputs is None:
            fresh = [np.empty(size, dtype=np.float32) for _ in results[1:]]
            outputs = (np.empty(size, dtype=np.float32) if into is None else into, *fresh)
        for out, result in zip(outputs, results, strict=True):
            out[start:stop] = result
    if outputs is None:  # an empty model: the formula still decides how many outputs
        outputs = tuple(np.asarray(r, dtype=np.float32) for r in formula(*inputs))
        if into is not None:
            outputs = (into, *outputs[1:])
    return outputs


def sgd_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    momentum: float,
    into: FloatVector | None = None,
) -> tuple[FloatVector, Moments]:
    """x += lr * Δ, or with momentum (FedAvgM, Hsu et al. 2019): v = β v + Δ; x += lr * v."""
    if momentum > 0:

        def with_momentum(
            x: FloatVector, d: FloatVector, v0: FloatVector
        ) -> tuple[FloatVector, ...]:
            v = (momentum * v0 + d).astype(np.float32)
            return (x + lr * v).astype(np.float32), v

        new, v = by_blocks(with_momentum, params, delta, moments["opt/v"], into=into)
        return new, {"opt/v": v}

    def plain(x: FloatVector, d: FloatVector) -> tuple[FloatVector, ...]:
        return ((x + lr * d).astype(np.float32),)

    (new,) = by_blocks(plain, params, delta, into=into)
    return new, {}


def adagrad_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    tau: float,
    into: FloatVector | None = None,
) -> tuple[FloatVector, Moments]:
    """FedAdagrad: v = v + Δ²; x += lr * Δ / (sqrt(v) + τ)."""

    def formula(x: FloatVector, d: FloatVector, v0: FloatVector) -> tuple[FloatVector, ...]:
        v = (v0 + d * d).astype(np.float32)
        return (x + lr * d / (np.sqrt(v) + tau)).astype(np.float32), v

    new, v = by_blocks(formula, params, delta, moments["opt/v"], into=into)
    return new, {"opt/v": v}


def adam_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    into: FloatVector | None = None,
) -> tuple[FloatVector, Moments]:
    """FedAdam: m = β1 m + (1-β1) Δ; v = β2 v + (1-β2) Δ²; x += lr * m / (sqrt(v) + τ)."""

    def formula(
        x: FloatVector, d: FloatVector, m0: FloatVector, v0: FloatVector
    ) -> tuple[FloatVector, ...]:
        m = (beta1 * m0 + (1 - beta1) * d).astype(np.float32)
        v = (beta2 * v0 + (1 - beta2) * d * d).astype(np.float32)
        return (x + lr * m / (np.sqrt(v) + tau)).astype(np.float32), m, v

    new, m, v = by_blocks(formula, params, delta, moments["opt/m"], moments["opt/v"], into=into)
    return new, {"opt/m": m, "opt/v": v}


def yogi_step(
    params: FloatVector,
    delta: FloatVector,
    moments: Moments,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    into: FloatVector | None = None,
) -> tuple[FloatVector, Moments]:
    """FedYogi: like Adam but v -= (1-β2) Δ² sign(v - Δ²), so v grows more carefully."""

    def formula(
        x: FloatVector, d: FloatVector, m0: FloatVector, v0: FloatVector
    ) -> tuple[FloatVector, ...]:
        m = (beta1 * m0 + (1 - beta1) * d).astype(np.float32)
        d2 = d * d
        v = (v0 - (1 - beta2) * d2 * np.sign(v0 - d2)).astype(np.float32)
        return (x + lr * m / (np.sqrt(v) + tau)).astype(np.float32), m, v

    new, m, v = by_blocks(formula, params, delta, moments["opt/m"], moments["opt/v"], into=into)
    return new, {"opt/m": m, "opt/v": v}
