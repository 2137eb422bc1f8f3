"""Compressed uploads (issue #5): bytes saved and accuracy lost, side by side.

For each dataset, FedAvg runs with dense float32 uploads, stochastic 8-bit and 4-bit
quantisation, and top-k (1%) with error feedback, same seeds. Bytes are what each site
uploaded over the whole run (summed over sites and rounds), exactly as the wire format
would move them. Targets: 8-bit >= 3.9x fewer bytes, top-k 1% + EF >= 25x, each losing at
most 1 point of accuracy (mean over seeds) against the dense run (server lr 1). Top-k is
also shown with a server learning rate of 2, beside the dense run at that rate.

* BreastMNIST, 10 IID sites, CNN (width 16), Adam 1e-3, batch 16, 2 epochs, 30 rounds:
  pooled test accuracy.
* Heart disease (FLamby split, 4 hospitals), MLP with one hidden layer of 32: the embedded
  logistic model has 14 parameters, too few for top-k to keep 1% of anything, so the
  benchmark uses the smallest MLP on which 1% is at least a few values. SGD lr 0.02,
  batch 16, 30 rounds, uniform weighting; mean of per-site test accuracies.

    python benchmarks/compression.py [--seeds 3] [--rounds 30] [--only heart|breastmnist]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.data.heart import load_heart_disease
from fedcare.data.medmnist import load_medmnist
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation
from fedcare.sim.evaluation import pooled

VARIANTS = [
    ("dense float32", [], {}),
    ("8-bit", [{"stage": "quantize", "bits": 8}], {}),
    ("4-bit", [{"stage": "quantize", "bits": 4}], {}),
    ("top-k 1% + EF", [{"stage": "topk", "fraction": 0.01, "error_feedback": True}], {}),
    # A sparse upload moves the model less per round (error feedback delivers the rest
    # later); a larger server step compensates. The dense run at the same server step is
    # shown too, so the comparison stays fair.
    (
        "top-k 1% + EF, server lr 2",
        [{"stage": "topk", "fraction": 0.01, "error_feedback": True}],
        {"server_lr": 2.0},
    ),
    ("dense, server lr 2", [], {"server_lr": 2.0}),
]
TARGET_RATIO = {"8-bit": 3.9, "top-k 1% + EF": 25.0, "top-k 1% + EF, server lr 2": 25.0}

SETUPS = {
    "breastmnist": {
        "load": lambda: load_medmnist("breastmnist", num_sites=10, partition="iid", seed=0),
        "model": ("cnn", {"width": 16}),
        "spec": TrainSpec(optimizer="adam", lr=1e-3, batch_size=16, epochs=2),
        "params": {},
        "metric": "pooled accuracy",
    },
    "heart": {
        "load": load_heart_disease,
        "model": ("mlp", {"hidden": [32]}),
        "spec": TrainSpec(optimizer="sgd", lr=0.02, batch_size=16, epochs=1),
        "params": {"weighting": "uniform"},
        "metric": "mean site accuracy",
    },
}


def run_once(
    setup: dict, dataset, stages: list, seed: int, rounds: int, extra: dict | None = None
) -> tuple[float, int]:
    name, model_params = setup["model"]
    sim = FederatedSimulation(
        module=build_model(name, dataset.input_shape, dataset.num_classes, **model_params),
        dataset=dataset,
        strategy=build_strategy("fedavg", {**setup["params"], **(extra or {}), "upload": stages}),
        spec=setup["spec"],
        rounds=rounds,
        seed=seed,
        eval_every=0,
    )
    result = sim.run()
    if setup["metric"] == "pooled accuracy":
        acc = pooled(result.final_eval).accuracy
    else:
        acc = float(np.mean([s.accuracy for s in result.final_eval.values()]))
    return acc, result.upload_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only", choices=sorted(SETUPS))
    args = parser.parse_args()
    for ds_name, setup in SETUPS.items():
        if args.only and ds_name != args.only:
            continue
        dataset = setup["load"]()
        start = time.perf_counter()
        print(
            f"\n{ds_name}: {setup['model']}, {args.rounds} rounds, {args.seeds} seeds ({setup['metric']})"
        )
        results = {}
        for label, stages, extra in VARIANTS:
            runs = [
                run_once(setup, dataset, stages, s, args.rounds, extra) for s in range(args.seeds)
            ]
            accs = np.array([a for a, _ in runs])
            results[label] = (accs, runs[0][1])
            print(f"  ... {label}: {accs.mean():.3f}", flush=True)
        dense_acc, dense_bytes = results["dense float32"]
        for label, (accs, nbytes) in results.items():
            ratio = dense_bytes / nbytes
            drop = float(dense_acc.mean() - accs.mean())
            verdict = ""
            if label in TARGET_RATIO:
                ok = ratio >= TARGET_RATIO[label] and drop <= 0.01
                verdict = (
                    f"  -> {'MET' if ok else 'MISSED'} (>= {TARGET_RATIO[label]}x, drop <= 0.01)"
                )
            elif label != "dense float32":
                verdict = f"  ({'within' if drop <= 0.01 else 'beyond'} 1 point)"
            print(
                f"  {label:27} acc {accs.mean():.3f} ± {accs.std():.3f}  upload {nbytes / 1e6:8.3f} MB"
                f"  {ratio:6.1f}x fewer bytes  drop {drop:+.3f}{verdict}"
            )
        print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
