"""DP-SGD speed and exactness: fedcare vs non-private training vs Opacus, side by side.

Workloads (realistic for fedcare): the default MLP (13-64-64-1) on the Cleveland site of
UCI Heart Disease (199 training rows), and the default CNN on BreastMNIST (546 images,
28x28) dealt to one site; expected batch 64 (Poisson sampling, q = 64 / n), z = 1.0,
C = 1.0, plain SGD. Every contender runs the *same* Poisson batches from the same start.

Contenders, per step: fedcare DP-SGD (``DPSGDTrainer``, accountant charged each step);
non-private plain PyTorch (module, loss.backward, torch.optim.SGD); non-private fedcare
``LocalTrainer`` (sequential path); Opacus 1.x default mode (GradSampleModule hooks +
DPOptimizer, as ``PrivacyEngine.make_private`` builds them, RDP accountant hook attached).
Runs are interleaved in rotating order, repeated, and medians are reported.

    .venv/bin/python benchmarks/dp_sgd.py [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.data.registry import load_dataset
from fedcare.ml.databank import DataBank
from fedcare.ml.dp_sgd import DPSGDConfig, DPSGDTrainer, poisson_schedule
from fedcare.ml.losses import per_sample_loss
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from fedcare.privacy.accountant import PrivacyAccountant

try:
    import opacus
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer
except ImportError:  # reported in the output, the other comparisons still run
    opacus = None

Z, C, LR, BATCH = 1.0, 1.0, 0.05, 64


def workloads() -> dict[str, tuple[nn.Module, DataBank, int]]:
    heart = load_dataset("heart-disease").sites[0]
    breast = load_dataset("breastmnist", num_sites=1)
    out = {}
    torch.manual_seed(0)
    out["mlp/heart (199 rows, 13 features)"] = (
        build_model("mlp", (13,), 2),
        DataBank.from_arrays([heart.x_train], [heart.y_train]),
        2,
    )
    site = breast.sites[0]
    out[f"cnn/breastmnist ({len(site.y_train)} images, 28x28)"] = (
        build_model("cnn", (1, 28, 28), 2),
        DataBank.from_arrays([site.x_train], [site.y_train]),
        2,
    )
    return out


def fedcare_dp(
    module: nn.Module, bank: DataBank, classes: int, spec: TrainSpec, schedule, method="auto"
):
    config = DPSGDConfig(noise_multiplier=Z, clip_norm=C)
    trainer = DPSGDTrainer(module, classes, config, method=method)
    start = trainer.initial_vector()[None]

    def run() -> None:
        trainer.train(
            bank, [0], start, [schedule], [LocalObjective()], spec,
            accountants=[PrivacyAccountant(1e-5)], noise_rngs=[np.random.default_rng(0)],
        )  # fmt: skip

    return run


def fedcare_plain(module: nn.Module, bank: DataBank, classes: int, spec: TrainSpec, schedule):
    trainer = LocalTrainer(module, classes, mode="sequential")
    start = trainer.initial_vector()[None]
    return lambda: trainer.train(bank, [0], start, [schedule], [LocalObjective()], spec)


def torch_plain(module: nn.Module, bank: DataBank, classes: int, spec: TrainSpec, schedule):
    start = {k: v.clone() for k, v in module.state_dict().items()}
    batches = [torch.from_numpy(b[b >= 0]) for b in schedule]

    def run() -> None:
        module.load_state_dict(start)
        opt = torch.optim.SGD(module.parameters(), lr=LR)
        for rows in batches:
            opt.zero_grad()
            per_sample_loss(module(bank.x[rows]), bank.y[rows], classes).mean().backward()
            opt.step()

    return run


def opacus_dp(module: nn.Module, bank: DataBank, classes: int, spec: TrainSpec, schedule):
    n = int(bank.counts[0])
    start = {k: v.clone() for k, v in module.state_dict().items()}
    gsm = GradSampleModule(module, loss_reduction="mean")  # Opacus's default "hooks" mode
    batches = [torch.from_numpy(b[b >= 0]) for b in schedule]

    def run() -> None:
        gsm._module.load_state_dict(start)
        accountant = RDPAccountant()
        opt = DPOptimizer(
            torch.optim.SGD(gsm.parameters(), lr=LR),
            noise_multiplier=Z,
            max_grad_norm=C,
            expected_batch_size=BATCH,
            loss_reduction="mean",
        )
        opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=BATCH / n))
        for rows in batches:
            opt.zero_grad()
            per_sample_loss(gsm(bank.x[rows]), bank.y[rows], classes).mean().backward()
            opt.step()

    return run, gsm


def per_sample_agreement(module: nn.Module, gsm, bank: DataBank, classes: int) -> float:
    """Largest relative difference (per sample, over all parameters) fedcare vs Opacus."""
    rows = torch.arange(min(BATCH, int(bank.counts[0])))
    x, y = bank.x[rows], bank.y[rows]
    gsm._module.load_state_dict(module.state_dict())  # same weights as fedcare's copy
    gsm.zero_grad()
    per_sample_loss(gsm(x), y, classes).mean().backward()
    theirs = torch.cat([p.grad_sample.reshape(len(rows), -1) for p in gsm.parameters()], dim=1)
    trainer = DPSGDTrainer(module, classes, DPSGDConfig(noise_multiplier=Z, clip_norm=C))
    flat = torch.from_numpy(trainer.initial_vector())
    grads, _ = trainer.per_sample_gradients(flat, x, y)  # the torch.func (vmap) path
    ours = torch.cat([g.reshape(len(rows), -1) for g in grads.values()], dim=1)
    return float(((ours - theirs).norm(dim=1) / theirs.norm(dim=1)).max())


def measure(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    names = list(contenders)
    for fn in contenders.values():  # warm-up (vmap tracing, allocator)
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    # One thread by default: on a shared, loaded 2-core machine torch's worker threads
    # spin against other processes and every timing becomes noise.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ", end="")
    print(f"opacus {opacus.__version__}" if opacus is not None else "opacus NOT INSTALLED")
    print(f"z={Z}, C={C}, expected batch {BATCH}, {args.steps} steps per run, "
          f"median of {args.repeats} interleaved runs")  # fmt: skip
    for label, (module, bank, classes) in workloads().items():
        n = int(bank.counts[0])
        spec = TrainSpec(lr=LR, steps=args.steps, batch_size=BATCH)
        schedule = poisson_schedule(n, spec, np.random.default_rng(1))
        # Each contender trains its own copy (Opacus hooks must not fire in the others).
        contenders = {
            "fedcare DP-SGD": fedcare_dp(copy.deepcopy(module), bank, classes, spec, schedule),
            "plain PyTorch (non-private)": torch_plain(
                copy.deepcopy(module), bank, classes, spec, schedule
            ),
            "fedcare LocalTrainer (non-private)": fedcare_plain(
                copy.deepcopy(module), bank, classes, spec, schedule
            ),
        }
        dp_trainer = DPSGDTrainer(module, classes, DPSGDConfig(noise_multiplier=Z, clip_norm=C))
        if dp_trainer.method == "layerwise":
            contenders["fedcare DP-SGD, vmap path"] = fedcare_dp(
                copy.deepcopy(module), bank, classes, spec, schedule, method="vmap"
            )
        gsm = None
        if opacus is not None:
            contenders["Opacus DP-SGD (hooks)"], gsm = opacus_dp(
                copy.deepcopy(module), bank, classes, spec, schedule
            )
        medians = measure(contenders, args.repeats)
        print(f"\n{label}: q = {BATCH}/{n} = {BATCH / n:.3f}, DP-SGD path '{dp_trainer.method}'")
        for name, seconds in medians.items():
            print(f"  {name:36s} {1e3 * seconds / args.steps:8.2f} ms/step")
        dp = medians["fedcare DP-SGD"]
        plain = medians["plain PyTorch (non-private)"]
        print(f"  DP-SGD overhead vs plain PyTorch: {dp / plain:.2f}x time (target <= 2x)")
        ratio_local = dp / medians["fedcare LocalTrainer (non-private)"]
        print(f"  DP-SGD overhead vs fedcare LocalTrainer: {ratio_local:.2f}x time")
        if gsm is not None:
            speed = medians["Opacus DP-SGD (hooks)"] / dp
            print(f"  fedcare speed / Opacus speed: {speed:.2f}x (target >= 1.5x)")
            agreement = per_sample_agreement(module, gsm, bank, classes)
            print(f"  per-sample gradients vs Opacus: max relative difference {agreement:.2e}")


if __name__ == "__main__":
    main()
