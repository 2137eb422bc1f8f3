"""Local optimizers as pure updates on stacked flat parameters (K sites x P values).

They reproduce torch.optim.SGD (momentum, dampening 0, L2 weight decay) and
torch.optim.Adam (bias-corrected, L2 weight decay) step for step, so the batched trainer
matches the sequential torch.optim trainer. ``active`` marks the sites that take a step
this iteration (sites with fewer batches stop early and keep their state).
"""

from __future__ import annotations

import torch

from fedcare.core.records import TrainSpec

OptState = dict[str, torch.Tensor]


def init_state(spec: TrainSpec, params: torch.Tensor) -> OptState:
    k = params.shape[0]
    state: OptState = {"step": torch.zeros(k, dtype=torch.int64)}
    if spec.optimizer == "adam":
        state["m"] = torch.zeros_like(params)
        state["v"] = torch.zeros_like(params)
    elif spec.momentum > 0:
        state["buf"] = torch.zeros_like(params)
    return state


def step(
    spec: TrainSpec, params: torch.Tensor, grad: torch.Tensor, state: OptState, active: torch.Tensor
) -> torch.Tensor:
    """One masked optimizer step; updates ``state`` in place and returns the new params."""
    if spec.weight_decay:
        grad = grad + spec.weight_decay * params
    act = active[:, None]
    new_step = state["step"] + active.to(torch.int64)
    if spec.optimizer == "adam":
        b1, b2 = spec.betas
        m = torch.where(act, state["m"].lerp(grad, 1 - b1), state["m"])
        v = torch.where(act, state["v"] * b2 + (1 - b2) * grad * grad, state["v"])
        # Bias corrections in float64, as torch.optim computes them with Python floats.
        t = new_step.clamp(min=1).to(torch.float64)
        bc1 = (1 - b1**t).to(params.dtype)
        bc2_sqrt = torch.sqrt(1 - b2**t).to(params.dtype)
        denom = v.sqrt() / bc2_sqrt[:, None] + spec.eps
        updated = params - (spec.lr / bc1)[:, None] * m / denom
        state["m"], state["v"] = m, v
    elif spec.momentum > 0:
        first = (state["step"] == 0)[:, None]
        buf = torch.where(first, grad, spec.momentum * state["buf"] + grad)
        buf = torch.where(act, buf, state["buf"])
        updated = params - spec.lr * buf
        state["buf"] = buf
    else:
        updated = params - spec.lr * grad
    state["step"] = new_step
    if bool(active.all()):
        return updated
    return torch.where(act, updated, params)


def torch_optimizer(spec: TrainSpec, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch.optim equivalent used by the sequential trainer."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(
            parameters, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
        )
    return torch.optim.SGD(
        parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
