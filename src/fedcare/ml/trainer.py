"""Local training for many sites: one batched computation, or a plain sequential loop.

Batched: the K sites' parameters are stacked into one (K, P) tensor and each step runs
``vmap(grad(loss))`` over sites, so K small models train as a few large kernels.
Sequential: a plain PyTorch loop, one site at a time, with torch.optim; used for models
that vmap cannot handle (buffers such as batch-norm statistics) and as the reference the
batched path is tested against. Both read the same seeded batch schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedcare.core.errors import TrainingDivergedError
from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.vectors import ParamLayout
from fedcare.ml import optim
from fedcare.ml.databank import DataBank
from fedcare.ml.losses import batch_loss, is_survival_target, per_sample_loss
from fedcare.ml.schedule import stack_schedules
from fedcare.ml.torch_adapter import has_buffers, layout_of, load_vector, module_to_vector
from fedcare.models.stacked import StackedForward

Mode = Literal["auto", "batched", "sequential"]


@dataclass
class TrainResult:
    params: npt.NDArray[np.float32]  # (K, P) after training
    num_steps: npt.NDArray[np.int64]  # (K,)
    train_loss: npt.NDArray[np.float64]  # (K,) mean loss over the steps taken
    opt_states: list[Any]  # per site, to continue training later (local/pooled baselines)


class LocalTrainer:
    """Trains copies of one architecture at many sites."""

    def __init__(
        self, module: nn.Module, num_classes: int, mode: Mode = "auto", stacked: bool | None = None
    ) -> None:
        self.module = module
        self.num_classes = num_classes
        self.layout: ParamLayout = layout_of(module)
        self.batchable = not has_buffers(module)
        if mode == "batched" and not self.batchable:
            raise ValueError(
                "batched training needs a model without buffers (batch-norm statistics); "
                "use mode 'sequential' or 'auto'"
            )
        self.mode: Mode = (
            ("batched" if self.batchable else "sequential") if mode == "auto" else mode
        )
        self._trainable = torch.from_numpy(self.layout.mask())
        self._all_trainable = bool(self._trainable.all())
        self._views = [
            (spec.name, start, stop, spec.shape) for spec, start, stop in self.layout.offsets()
        ]
        self._grad_fn = vmap(grad_and_value(self._site_loss))
        # Dense models with a stacked forward use batched matmuls; others use vmap.
        supports_stacked = isinstance(module, StackedForward)
        if stacked and not supports_stacked:
            raise ValueError(
                f"{type(module).__name__} has no stacked_forward; use vmap (stacked=None)"
            )
        self.stacked = supports_stacked if stacked is None else stacked

    def initial_vector(self) -> npt.NDArray[np.float32]:
        return module_to_vector(self.module, self.layout)

    # -- batched path -------------------------------------------------------------------
    def _batched_grads(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-site gradients (K, P) and per-site mean losses (K,) of one step."""
        if not self.stacked:
            return self._grad_fn(flat, x, y, w)
        k = flat.shape[0]
        # One leaf per tensor, each a view into ``flat`` (no copy); their gradients are
        # concatenated once, cheaper than autograd scattering slices into a (K, P) buffer.
        leaves = [
            flat[:, start:stop].view(k, *shape).detach().requires_grad_(True)
            for _, start, stop, shape in self._views
        ]
        params = {view[0]: leaf for view, leaf in zip(self._views, leaves, strict=True)}
        logits = self.module.stacked_forward(params, x)  # type: ignore[operator]
        site_losses = batch_loss(logits, y, w, self.num_classes)
        # Sites are independent, so the gradient of the sum is each site's own gradient.
        parts = torch.autograd.grad(site_losses.sum(), leaves, allow_unused=True)
        grads = torch.cat(
            [
                (g if g is not None else torch.zeros_like(leaf)).reshape(k, -1)
                for g, leaf in zip(parts, leaves, strict=True)
            ],
            dim=1,
        )
        return grads, site_losses.detach()

    def _site_loss(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        params = {name: flat[start:stop].view(shape) for name, start, stop, shape in self._views}
        logits = functional_call(self.module, params, (x,))
        return batch_loss(logits, y, w, self.num_classes)

    def _train_batched(
        self,
        bank: DataBank,
        sites: Sequence[int],
        starts: npt.NDArray[np.float32],
        schedules: Sequence[npt.NDArray[np.int64]],
        objectives: Sequence[LocalObjective],
        spec: TrainSpec,
        opt_states: Sequence[Any] | None,
    ) -> TrainResult:
        k = len(sites)
        flat = torch.from_numpy(np.array(starts, dtype=np.float32, copy=True))
        index = torch.from_numpy(stack_schedules(list(schedules), bank.offsets[np.asarray(sites)]))
        steps_taken = torch.zeros(k, dtype=torch.int64)
        loss_sum = torch.zeros(k, dtype=torch.float64)
        prox, anchors, corrections = self._objective_tensors(objectives, flat)
        state = self._stack_states(spec, flat, opt_states)
        self.module.train()
        for s in range(index.shape[1]):
            idx = index[:, s, :]
            w = (idx >= 0).to(flat.dtype)
            rows = idx.clamp(min=0)
            active = w.sum(dim=1) > 0
            grads, losses = self._batched_grads(flat, bank.x[rows], bank.y[rows], w)
            if prox is not None and anchors is not None:
                grads = grads + prox[:, None] * (flat - anchors)
            if corrections is not None:
                grads = grads + corrections
            if not self._all_trainable:
                grads = grads * self._trainable
            flat = optim.step(spec, flat, grads, state, active)
            steps_taken += active.to(torch.int64)
            loss_sum += torch.where(active, losses.detach().to(torch.float64), 0.0)
        mean_loss = (loss_sum / steps_taken.clamp(min=1)).numpy()
        states = [{key: v[i].clone() for key, v in state.items()} for i in range(k)]
        return TrainResult(flat.numpy(), steps_taken.numpy(), mean_loss, states)

    def _objective_tensors(
        self, objectives: Sequence[LocalObjective], flat: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if all(o.is_plain for o in objectives):
            return None, None, None
        prox = anchors = corrections = None
        if any(o.prox_mu for o in objectives):
            prox = torch.tensor([o.prox_mu for o in objectives], dtype=flat.dtype)
            anchors = torch.stack(
                [
                    torch.from_numpy(o.anchor) if o.anchor is not None else flat[i]
                    for i, o in enumerate(objectives)
                ]
            )
        if any(o.correction is not None for o in objectives):
            zeros = np.zeros(flat.shape[1], dtype=np.float32)
            corrections = torch.from_numpy(
                np.stack([o.correction if o.correction is not None else zeros for o in objectives])
            )
        return prox, anchors, corrections

    @staticmethod
    def _stack_states(
        spec: TrainSpec, flat: torch.Tensor, opt_states: Sequence[Any] | None
    ) -> optim.OptState:
        if opt_states is None or any(s is None for s in opt_states):
            return optim.init_state(spec, flat)
        return {key: torch.stack([s[key] for s in opt_states]) for key in opt_states[0]}

    # -- sequential path ----------------------------------------------------------------
    def _train_sequential(
        self,
        bank: DataBank,
        sites: Sequence[int],
        starts: npt.NDArray[np.float32],
        schedules: Sequence[npt.NDArray[np.int64]],
        objectives: Sequence[LocalObjective],
        spec: TrainSpec,
        opt_states: Sequence[Any] | None,
    ) -> TrainResult:
        k = len(sites)
        out = np.empty((k, self.layout.size), dtype=np.float32)
        steps = np.zeros(k, dtype=np.int64)
        losses = np.zeros(k, dtype=np.float64)
        new_states: list[Any] = []
        named = dict(self.module.named_parameters())
        for i, site in enumerate(sites):
            load_vector(self.module, starts[i], self.layout)
            self.module.train()
            trainable = [p for p in self.module.parameters() if p.requires_grad]
            opt = optim.torch_optimizer(spec, trainable)
            if opt_states is not None and opt_states[i] is not None:
                opt.load_state_dict(opt_states[i])
            x_site, y_site = bank.site_arrays(site)
            survival = is_survival_target(y_site)
            obj = objectives[i]
            extra = self._sequential_terms(obj, starts[i], named)
            total = 0.0
            for batch in schedules[i]:
                rows = torch.from_numpy(batch[batch >= 0])
                opt.zero_grad(set_to_none=False)
                logits = self.module(x_site[rows])
                loss = (
                    batch_loss(logits, y_site[rows], torch.ones(len(rows)), self.num_classes)
                    if survival  # the Cox loss couples the batch's rows
                    else per_sample_loss(logits, y_site[rows], self.num_classes).mean()
                )
                loss.backward()
                if extra:
                    with torch.no_grad():
                        for p, anchor, corr in extra:
                            if p.grad is None:
                                continue
                            if anchor is not None:
                                p.grad.add_(obj.prox_mu * (p - anchor))
                            if corr is not None:
                                p.grad.add_(corr)
                opt.step()
                total += float(loss.detach())
            steps[i] = len(schedules[i])
            losses[i] = total / max(len(schedules[i]), 1)
            out[i] = module_to_vector(self.module, self.layout)
            new_states.append(opt.state_dict())
        return TrainResult(out, steps, losses, new_states)

    def _sequential_terms(
        self,
        obj: LocalObjective,
        start_vector: npt.NDArray[np.float32],
        named: dict[str, nn.Parameter],
    ) -> list[tuple[nn.Parameter, torch.Tensor | None, torch.Tensor | None]]:
        if obj.is_plain:
            return []
        anchor_vec = obj.anchor if obj.anchor is not None else start_vector.copy()
        terms = []
        for spec, start, stop in self.layout.offsets():
            if not spec.trainable or spec.name not in named:
                continue
            anchor = (
                torch.from_numpy(anchor_vec[start:stop]).view(spec.shape) if obj.prox_mu else None
            )
            corr = (
                torch.from_numpy(obj.correction[start:stop]).view(spec.shape)
                if obj.correction is not None
                else None
            )
            terms.append((named[spec.name], anchor, corr))
        return terms

    # -- entry point --------------------------------------------------------------------
    def train(
        self,
        bank: DataBank,
        sites: Sequence[int],
        starts: npt.NDArray[np.float32],
        schedules: Sequence[npt.NDArray[np.int64]],
        objectives: Sequence[LocalObjective],
        spec: TrainSpec,
        opt_states: Sequence[Any] | None = None,
    ) -> TrainResult:
        """Train ``sites`` (indices into ``bank``) from ``starts`` (K, P) along their schedules."""
        if starts.shape != (len(sites), self.layout.size):
            raise ValueError(
                f"starts must have shape ({len(sites)}, {self.layout.size}), found {starts.shape}"
            )
        if not (len(schedules) == len(objectives) == len(sites)):
            raise ValueError("one schedule and one objective per site are required")
        run = self._train_batched if self.mode == "batched" else self._train_sequential
        with torch.enable_grad():
            result = run(bank, sites, starts, schedules, objectives, spec, opt_states)
        finite = np.isfinite(result.params).all(axis=1)
        if not finite.all():
            bad = [int(sites[int(i)]) for i in np.flatnonzero(~finite)]
            raise TrainingDivergedError(
                f"local training diverged (non-finite parameters) at site index(es) {bad[:10]}; "
                f"lower local.lr (now {spec.lr}) or the algorithm's regularisation strength"
            )
        return result
