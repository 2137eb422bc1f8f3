"""Simulator speed: fedcare (batched) vs a plain sequential PyTorch loop vs Flower.

Workload (issue #2): 100 sites x 200 samples x 32 features, MLP 32-64-64-1, one local
epoch of batch 32, SGD lr 0.05, FedAvg, 10 rounds, full participation. fedcare and the
plain loop run side by side in this process (each warmed up once, medians of --repeats);
Flower 1.41 runs in its own virtualenv (.venv-flower, see benchmarks/README.md) as a
child process because its pins differ from ours, and reports its timings as JSON.
Also runs 1,000 sites in a child process to measure peak RSS.

    python benchmarks/sim_speed.py --repeats 3 [--flower] [--large-sites 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _workload import make_workload
from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation
from fedcare.sim.evaluation import pooled
from plain_torch_loop import accuracy, plain_fedavg

SPEC = TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=32)
ROOT = Path(__file__).resolve().parent.parent


def as_dataset(train, test) -> FederatedDataset:
    sites = [
        SiteData(f"site{k:04d}", xtr, ytr, xte, yte)
        for k, ((xtr, ytr), (xte, yte)) in enumerate(zip(train, test, strict=True))
    ]
    return FederatedDataset("bench", sites, "binary", 2, (train[0][0].shape[1],))


def run_fedcare(
    dataset: FederatedDataset, rounds: int, seed: int = 0, mode: str = "batched"
) -> tuple[float, float]:
    model = build_model("mlp", dataset.input_shape, 2, hidden=(64, 64))
    sim = FederatedSimulation(
        module=model,
        dataset=dataset,
        strategy=build_strategy("fedavg"),
        spec=SPEC,
        rounds=rounds,
        seed=seed,
        mode=mode,  # type: ignore[arg-type]
        eval_every=0,
    )
    t0 = time.perf_counter()
    result = sim.run()
    seconds = time.perf_counter() - t0
    return seconds, pooled(result.final_eval).accuracy


def run_plain(train, test, rounds: int, seed: int = 0) -> tuple[float, float]:
    t0 = time.perf_counter()
    model = plain_fedavg(train, rounds, lr=SPEC.lr, batch_size=SPEC.batch_size or 32, seed=seed)
    seconds = time.perf_counter() - t0
    return seconds, accuracy(model, test)


def run_flower(sites: int, rounds: int) -> dict[str, float] | None:
    python = ROOT / ".venv-flower" / "bin" / "python"
    if not python.exists():
        print("  (Flower skipped: no .venv-flower; see benchmarks/README.md)")
        return None
    cmd = [
        str(python),
        str(Path(__file__).parent / "flower_sim.py"),
        "--sites",
        str(sites),
        "--rounds",
        str(rounds),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("FLOWER_RESULT ")]
    if out.returncode != 0 or not lines:
        print(out.stdout[-2000:], out.stderr[-4000:])
        return None
    return json.loads(lines[-1].removeprefix("FLOWER_RESULT "))


def child_large(sites: int, rounds: int) -> None:
    train, test = make_workload(sites)
    seconds, acc = run_fedcare(as_dataset(train, test), rounds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "LARGE_RESULT " + json.dumps({"seconds": seconds, "accuracy": acc, "peak_rss_mb": peak_mb})
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--flower", action="store_true", help="also run Flower (needs .venv-flower)"
    )
    parser.add_argument("--large-sites", type=int, default=1000)
    parser.add_argument(
        "--accuracy-seeds",
        type=int,
        default=10,
        help="seeds for the accuracy comparison (10 rounds vary by seed)",
    )
    parser.add_argument("--child-large", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_large:
        child_large(args.large_sites, args.rounds)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    train, test = make_workload(args.sites)
    dataset = as_dataset(train, test)
    updates = args.sites * args.rounds
    # Warm-up: first use of torch.func / autograd pays one-off import and allocation costs.
    run_fedcare(dataset, 1)
    run_plain(train[:5], test[:5], 1)
    fed, plain = [], []
    # Repeat i uses seed i for both engines: timings are medians, accuracies means, because
    # at 10 rounds the final accuracy varies by a few points from seed to seed.
    for seed in range(args.repeats):
        fed.append(run_fedcare(dataset, args.rounds, seed))
        plain.append(run_plain(train, test, args.rounds, seed))
    fed_s = statistics.median(s for s, _ in fed)
    plain_s = statistics.median(s for s, _ in plain)
    fed_acc = statistics.mean(a for _, a in fed)
    plain_acc = statistics.mean(a for _, a in plain)
    results: dict[str, object] = {
        "workload": {"sites": args.sites, "samples": 200, "features": 32, "rounds": args.rounds},
        "fedcare_batched": {
            "seconds": fed_s,
            "updates_per_s": updates / fed_s,
            "accuracy": fed_acc,
        },
        "plain_torch": {
            "seconds": plain_s,
            "updates_per_s": updates / plain_s,
            "accuracy": plain_acc,
        },
        "speedup_vs_plain": plain_s / fed_s,
    }
    print(
        f"fedcare batched : {fed_s:7.3f} s  {updates / fed_s:9.1f} client-updates/s  acc {fed_acc:.3f}"
    )
    print(
        f"plain PyTorch   : {plain_s:7.3f} s  {updates / plain_s:9.1f} client-updates/s  acc {plain_acc:.3f}"
    )
    print(f"ratio fedcare / plain loop: {plain_s / fed_s:.2f}x (median of {args.repeats})")

    if args.accuracy_seeds:
        fed_accs = [
            fed[i][1] if i < len(fed) else run_fedcare(dataset, args.rounds, i)[1]
            for i in range(args.accuracy_seeds)
        ]
        plain_accs = [
            plain[i][1] if i < len(plain) else run_plain(train, test, args.rounds, i)[1]
            for i in range(args.accuracy_seeds)
        ]
        results["accuracy_over_seeds"] = {
            "seeds": args.accuracy_seeds,
            "fedcare": [statistics.mean(fed_accs), statistics.pstdev(fed_accs)],
            "plain_torch": [statistics.mean(plain_accs), statistics.pstdev(plain_accs)],
        }
        print(
            f"final accuracy over {args.accuracy_seeds} seeds: fedcare {statistics.mean(fed_accs):.3f} ± "
            f"{statistics.pstdev(fed_accs):.3f}, plain {statistics.mean(plain_accs):.3f} ± {statistics.pstdev(plain_accs):.3f}"
        )

    if args.flower:
        flower = run_flower(args.sites, args.rounds)
        if flower is not None:
            results["flower"] = flower
            results["speedup_vs_flower_total"] = flower["seconds_total"] / fed_s
            results["speedup_vs_flower_rounds"] = flower["seconds_rounds"] / fed_s
            print(
                f"Flower {flower['version']} run_simulation: {flower['seconds_total']:.2f} s total "
                f"({flower['seconds_rounds']:.2f} s in rounds), acc {flower['accuracy']:.3f}"
            )
            print(
                f"ratio fedcare / Flower: {flower['seconds_total'] / fed_s:.1f}x total, "
                f"{flower['seconds_rounds'] / fed_s:.1f}x counting only Flower's rounds"
            )

    if args.large_sites:
        cmd = [
            sys.executable,
            __file__,
            "--child-large",
            "--large-sites",
            str(args.large_sites),
            "--rounds",
            str(args.rounds),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        large = json.loads(
            next(ln for ln in out.stdout.splitlines() if ln.startswith("LARGE_RESULT ")).split(
                " ", 1
            )[1]
        )
        large["updates_per_s"] = args.large_sites * args.rounds / large["seconds"]
        results["large"] = {"sites": args.large_sites, **large}
        print(
            f"{args.large_sites} sites: {large['seconds']:.2f} s, {large['updates_per_s']:.0f} client-updates/s, "
            f"acc {large['accuracy']:.3f}, peak RSS {large['peak_rss_mb']:.0f} MB"
        )
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "sim_speed.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
