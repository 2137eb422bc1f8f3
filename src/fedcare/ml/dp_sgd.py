"""Sample-level DP-SGD (Abadi et al. 2016) on fedcare's flat parameter vectors.

Each step: Poisson-sample the batch (every row independently with probability q), compute
per-sample gradients with ``torch.func`` (``vmap(grad(loss))`` over the batch, one
vectorised backward pass), clip each sample's gradient over *all* parameters to L2 norm C,
sum, add N(0, (zC)^2), divide by the expected batch size q*n (not the realised one, which
would leak), then take the optimiser step. The site's accountant records every step as it
is taken, so no noised step goes uncounted.

fedcare's own models (MLP, logistic regression, CNN) take a faster, exact "layerwise"
path instead of vmap: from each layer's input a and the gradient g at its output, a
Linear layer's per-sample weight gradient is g a^T, so its norm is |g| |a| and the
clipped sum is one matrix product (the ghost-clipping identity of Goodfellow 2015 and Li
et al. 2022: the large dense layers never materialise per-sample gradients); a Conv2d's
per-sample gradient is g unfold(a)^T, as Opacus computes it. Tests check both paths agree.

The trainer has :class:`fedcare.ml.trainer.LocalTrainer`'s interface: flat start vectors
in, :class:`TrainResult` out. Schedules come from :func:`poisson_schedule` (same padded
format as ``batch_schedule``), seeded from the run's stream by :func:`dp_sgd_generators`;
each site may have its own noise multiplier (see :mod:`fedcare.privacy.sample_level`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedcare.core.errors import ConfigError, TrainingDivergedError
from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.core.vectors import ParamLayout
from fedcare.ml import optim
from fedcare.ml.databank import DataBank
from fedcare.ml.losses import COUPLED_LOSS, is_survival_target, per_sample_loss
from fedcare.ml.schedule import PAD
from fedcare.ml.torch_adapter import has_buffers, layout_of, module_to_vector
from fedcare.ml.trainer import TrainResult
from fedcare.models.cnn import SmallCNN
from fedcare.models.logistic import LogisticRegression
from fedcare.models.mlp import MLP
from fedcare.privacy.accountant import PrivacyAccountant
from fedcare.privacy.mechanisms import secure_rng
from fedcare.privacy.sample_level import sampling_rate

__all__ = [
    "SURVIVAL_REFUSAL",
    "DPSGDConfig",
    "DPSGDTrainer",
    "dp_sgd_generators",
    "poisson_schedule",
    "sampling_rate",
]

Method = Literal["auto", "vmap", "layerwise"]

SURVIVAL_REFUSAL = (
    f"sample-level DP-SGD cannot train a survival (Cox) model: {COUPLED_LOSS}, so one "
    "patient's record moves every other event's gradient and clipping per-sample gradients "
    "no longer bounds one patient's influence; use client-level DP (a 'dp' section) instead"
)

# As Opacus: clip factor C / (norm + 1e-6), so a clipped norm stays strictly below C.
_NORM_EPS = 1e-6


@dataclass(frozen=True)
class DPSGDConfig:
    """Noise multiplier z and per-sample clip norm C (``math.inf``: no clipping, not private)."""

    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(
                f"DP-SGD noise_multiplier must be finite and >= 0, found {self.noise_multiplier}"
            )
        if not (self.clip_norm > 0):
            raise ConfigError(f"DP-SGD clip_norm must be > 0, found {self.clip_norm}")
        if math.isinf(self.clip_norm) and self.noise_multiplier > 0:
            raise ConfigError(
                "DP-SGD with clip_norm = inf cannot be private; set a finite clip_norm"
            )


def dp_sgd_generators(
    seeds: SeedStream, round_index: int, site: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """(Poisson schedule, noise) generators of one site's round, from the run's seed stream.

    The schedule takes the plain trainer's key ("batches", round, site); the noise a child
    of ("noise", round, site), a key no other draw uses (client-level DP noise has its own).
    Used by the simulator and by a deployed site that reproduces it.
    """
    noise = seeds.sequence("noise", round_index, site).spawn(1)[0]
    return seeds.generator("batches", round_index, site), np.random.default_rng(noise)


def poisson_schedule(
    num_samples: int, spec: TrainSpec, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Row indices per step, (steps, max batch), padded with -1: each row joins each step's
    batch independently with probability q (Poisson sampling, which the accountant assumes).

    ``spec.steps_for(n)`` steps, as ``batch_schedule`` takes; batches may be empty.
    """
    q = sampling_rate(num_samples, spec)
    steps = spec.steps_for(num_samples)
    chosen = rng.random((steps, num_samples)) < q
    width = max(int(chosen.sum(axis=1).max(initial=0)), 1)
    out = np.full((steps, width), PAD, dtype=np.int64)
    for s in range(steps):
        rows = np.flatnonzero(chosen[s])
        out[s, : rows.size] = rows
    return out


class DPSGDTrainer:
    """Trains copies of one architecture at several sites with sample-level DP-SGD."""

    def __init__(
        self, module: nn.Module, num_classes: int, config: DPSGDConfig, method: Method = "auto"
    ) -> None:
        if has_buffers(module):
            raise ConfigError(
                f"{type(module).__name__} has buffers (batch-norm statistics), which mix "
                "samples within a batch and break per-sample privacy; use a model without "
                "batch norm (norm: false) for DP-SGD"
            )
        self.module = module
        self.num_classes = num_classes
        self.config = config
        self.layout: ParamLayout = layout_of(module)
        self._views = [
            (spec.name, start, stop, spec.shape, spec.trainable)
            for spec, start, stop in self.layout.offsets()
        ]
        self._layers = _fast_layers(module)
        if method == "layerwise" and self._layers is None:
            raise ConfigError(
                f"{type(module).__name__} is not one of fedcare's models with only trainable "
                "Linear/Conv2d layers; use method 'vmap' or 'auto'"
            )
        self.method: Method = (
            ("layerwise" if self._layers is not None else "vmap") if method == "auto" else method
        )
        self._grad_fn = vmap(
            grad_and_value(self._sample_loss), in_dims=(None, None, 0, 0), randomness="different"
        )

    def initial_vector(self) -> npt.NDArray[np.float32]:
        return module_to_vector(self.module, self.layout)

    def _sample_loss(
        self,
        trainable: dict[str, torch.Tensor],
        frozen: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        logits = functional_call(self.module, {**trainable, **frozen}, (x.unsqueeze(0),))
        return per_sample_loss(logits, y.unsqueeze(0), self.num_classes).sum()

    def _split(self, flat: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        trainable: dict[str, torch.Tensor] = {}
        frozen: dict[str, torch.Tensor] = {}
        for name, start, stop, shape, is_trainable in self._views:
            (trainable if is_trainable else frozen)[name] = flat[start:stop].view(shape)
        return trainable, frozen

    def per_sample_gradients(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-sample gradients ``{name: (B, *shape)}`` of the trainable tensors, and the
        per-sample losses (B,), in one vectorised pass."""
        trainable, frozen = self._split(flat)
        return self._grad_fn(trainable, frozen, x, y)

    def clipped_gradient_sum(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum over the batch of per-sample gradients clipped to C, as a flat (P,) vector
        (zeros at frozen entries); also the per-sample norms before clipping and losses."""
        out = torch.zeros(self.layout.size, dtype=flat.dtype)
        if x.shape[0] == 0:
            return out, torch.zeros(0), torch.zeros(0)
        if self.method == "layerwise" and self._layers is not None:
            fast = self._layerwise_clipped_sum(flat, x, y, self._layers, out)
            if fast is not None:
                return fast
        grads, losses = self.per_sample_gradients(flat, x, y)
        squares = torch.stack(
            [g.reshape(g.shape[0], -1).square().sum(dim=1) for g in grads.values()]
        )
        norms = squares.sum(dim=0).sqrt()
        factor = (self.config.clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        for name, start, stop, _, _ in self._views:
            if name in grads:
                g = grads[name]
                out[start:stop] = (factor @ g.reshape(g.shape[0], -1)).reshape(-1)
        return out, norms, losses

    def _layerwise_clipped_sum(
        self,
        flat: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        layers: dict[str, nn.Linear | nn.Conv2d],
        out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Clipped sum from each layer's input a and output gradient g, without vmap.

        Linear: per-sample grad(W) = g a^T, so its norm is |g| |a| and the clipped sum is
        (factor * g)^T a; the big dense layers never materialise per-sample gradients.
        Conv2d: per-sample grad(W) = g unfold(a)^T (small: conv kernels).
        Returns None (use vmap) if a layer sees an unexpected input or runs twice.
        """
        leaf = flat.detach().requires_grad_(True)
        params = {name: leaf[start:stop].view(shape) for name, start, stop, shape, _ in self._views}
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        inputs_ok = True

        def record(name: str, expected_dim: int) -> Any:
            def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                nonlocal inputs_ok
                inputs_ok = inputs_ok and inputs[0].dim() == expected_dim and name not in seen
                seen[name] = (inputs[0].detach(), output)

            return hook

        handles = [
            m.register_forward_hook(record(n, 2 if isinstance(m, nn.Linear) else 4))
            for n, m in layers.items()
        ]
        try:
            logits = functional_call(self.module, params, (x,))
        finally:
            for handle in handles:
                handle.remove()
        if not inputs_ok or len(seen) != len(layers):
            return None
        losses = per_sample_loss(logits, y, self.num_classes)
        names = list(seen)
        gouts = torch.autograd.grad(losses.sum(), [seen[n][1] for n in names])
        batch = x.shape[0]
        squares = torch.zeros(batch, dtype=flat.dtype)
        per_sample: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # conv: (B, O, I*k*k), g
        for name, g in zip(names, gouts, strict=True):
            layer, a = layers[name], seen[name][0]
            if isinstance(layer, nn.Linear):
                g_sq = g.square().sum(dim=1)
                squares += g_sq * a.square().sum(dim=1)
            else:
                g = g.reshape(batch, g.shape[1], -1)
                padding = cast(tuple[int, ...], layer.padding)  # _fast_layers: never a string
                unfolded = F.unfold(a, layer.kernel_size, layer.dilation, padding, layer.stride)
                w_grad = torch.bmm(g, unfolded.transpose(1, 2))
                per_sample[name] = (w_grad, g)
                squares += w_grad.reshape(batch, -1).square().sum(dim=1)
                g_sq = g.sum(dim=2).square().sum(dim=1)
            if layer.bias is not None:
                squares += g_sq
        norms = squares.sqrt()
        factor = (self.config.clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        offsets = {name: (start, stop) for name, start, stop, _, _ in self._views}
        for name, g in zip(names, gouts, strict=True):
            layer = layers[name]
            start, stop = offsets[f"{name}.weight"]
            if isinstance(layer, nn.Linear):
                scaled = g * factor[:, None]
                out[start:stop] = (scaled.T @ seen[name][0]).reshape(-1)
                bias_sum = scaled.sum(dim=0)
            else:
                w_grad, g3 = per_sample[name]
                out[start:stop] = (factor @ w_grad.reshape(batch, -1)).reshape(-1)
                bias_sum = factor @ g3.sum(dim=2)
            if layer.bias is not None:
                start, stop = offsets[f"{name}.bias"]
                out[start:stop] = bias_sum
        return out, norms.detach(), losses.detach()

    def train(
        self,
        bank: DataBank,
        sites: Sequence[int],
        starts: npt.NDArray[np.float32],
        schedules: Sequence[npt.NDArray[np.int64]],
        objectives: Sequence[LocalObjective],
        spec: TrainSpec,
        opt_states: Sequence[Any] | None = None,
        *,
        accountants: Sequence[PrivacyAccountant],
        noise_rngs: Sequence[np.random.Generator] | None = None,
        noise_multipliers: Sequence[float] | None = None,
    ) -> TrainResult:
        """Train ``sites`` from ``starts`` (K, P) along Poisson ``schedules``.

        ``accountants`` (one per site) record every step; ``noise_rngs`` (one per site, from
        the run's seed stream for reproducible simulation) default to CSPRNG-seeded ones.
        ``noise_multipliers`` (one per site, each calibrated to its own sampling rate)
        replace the config's z.
        """
        if is_survival_target(bank.y):
            raise ConfigError(SURVIVAL_REFUSAL)
        k = len(sites)
        if starts.shape != (k, self.layout.size):
            raise ValueError(
                f"starts must have shape ({k}, {self.layout.size}), found {starts.shape}"
            )
        if not (len(schedules) == len(objectives) == len(accountants) == k):
            raise ValueError("one schedule, objective and accountant per site are required")
        if noise_rngs is not None and len(noise_rngs) != k:
            raise ValueError("one noise generator per site is required")
        if noise_multipliers is None:
            noise_multipliers = [self.config.noise_multiplier] * k
        elif len(noise_multipliers) != k:
            raise ValueError("one noise multiplier per site is required")
        zs = [float(z) for z in noise_multipliers]
        for z in zs:
            DPSGDConfig(z, self.config.clip_norm)  # the config's checks, for each site's z
        out = np.empty((k, self.layout.size), dtype=np.float32)
        steps = np.zeros(k, dtype=np.int64)
        losses = np.zeros(k, dtype=np.float64)
        states: list[Any] = []
        self.module.train()
        for i, site in enumerate(sites):
            rng = noise_rngs[i] if noise_rngs is not None else secure_rng()
            state = None if opt_states is None else opt_states[i]
            out[i], steps[i], losses[i], new_state = self._train_site(
                bank, int(site), starts[i], schedules[i], objectives[i], spec, state,
                accountants[i], rng, zs[i],
            )  # fmt: skip
            states.append(new_state)
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            bad = [int(sites[int(j)]) for j in np.flatnonzero(~finite)]
            raise TrainingDivergedError(
                f"DP-SGD diverged (non-finite parameters) at site index(es) {bad[:10]}; lower "
                f"local.lr (now {spec.lr}) or the clip norm (now {self.config.clip_norm})"
            )
        return TrainResult(out, steps, losses, states)

    def _train_site(
        self,
        bank: DataBank,
        site: int,
        start: npt.NDArray[np.float32],
        schedule: npt.NDArray[np.int64],
        objective: LocalObjective,
        spec: TrainSpec,
        opt_state: dict[str, torch.Tensor] | None,
        accountant: PrivacyAccountant,
        rng: np.random.Generator,
        z: float,
    ) -> tuple[npt.NDArray[np.float32], int, float, dict[str, torch.Tensor]]:
        x_site, y_site = bank.site_arrays(site)
        n = int(bank.counts[site])
        q = sampling_rate(n, spec)
        expected_batch = q * n
        clip = self.config.clip_norm
        noise_std = z * clip if z > 0 else 0.0
        mask = self.layout.mask()
        trainable = None if mask.all() else torch.from_numpy(mask)  # None: skip the multiply
        # Copies: ``start`` may be a read-only broadcast view of the global model.
        anchor = torch.from_numpy(
            np.array(objective.anchor if objective.anchor is not None else start, np.float32)
        )
        correction = (
            torch.from_numpy(objective.correction) if objective.correction is not None else None
        )
        flat = torch.from_numpy(np.array(start, dtype=np.float32, copy=True))[None]
        if opt_state is None:
            state = optim.init_state(spec, flat)
        else:
            state = {key: v[None].clone() for key, v in opt_state.items()}
        active = torch.ones(1, dtype=torch.bool)
        loss_sum, loss_rows = 0.0, 0
        with torch.enable_grad():
            for batch in schedule:
                rows = torch.from_numpy(batch[batch >= 0])
                total, _, sample_losses = self.clipped_gradient_sum(
                    flat[0], x_site[rows], y_site[rows]
                )
                if noise_std > 0:
                    noise = torch.from_numpy(
                        rng.standard_normal(self.layout.size, dtype=np.float32)
                    )
                    noise = noise_std * noise
                    total = total + (noise if trainable is None else noise * trainable)
                grad = total / expected_batch
                extra = None
                if objective.prox_mu:
                    extra = objective.prox_mu * (flat[0] - anchor)
                if correction is not None:
                    extra = correction if extra is None else extra + correction
                if extra is not None:
                    grad = grad + (extra if trainable is None else extra * trainable)
                flat = optim.step(spec, flat, grad[None], state, active)
                accountant.record(z, q)
                loss_sum += float(sample_losses.sum())
                loss_rows += int(rows.numel())
        new_state = {key: v[0].clone() for key, v in state.items()}
        mean_loss = loss_sum / max(loss_rows, 1)
        return flat[0].detach().numpy(), len(schedule), mean_loss, new_state


def _fast_layers(module: nn.Module) -> dict[str, nn.Linear | nn.Conv2d] | None:
    """The Linear and Conv2d layers of one of fedcare's own models, if every parameter is
    a trainable weight or bias of such a layer (user models always take the vmap path:
    their forward might use a weight outside its layer, which hooks cannot see)."""
    if type(module) not in (MLP, LogisticRegression, SmallCNN):
        return None
    layers: dict[str, nn.Linear | nn.Conv2d] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            layers[name] = m
        elif isinstance(m, nn.Conv2d):
            if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
                return None
            layers[name] = m
    owned = {f"{n}.{p}" for n, m in layers.items() for p, _ in m.named_parameters()}
    params = dict(module.named_parameters())
    if set(params) != owned or not all(p.requires_grad for p in params.values()):
        return None
    return layers
