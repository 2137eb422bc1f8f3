"""The simulator on the round core against a baseline checkout, side by side.

Runs benchmarks/sim_speed.py's workload (100 sites x 200 rows x 32 features, MLP
32-64-64-1, one epoch of batch 32, FedAvg, 10 rounds, full participation) with this
checkout's fedcare and with a baseline's (``--baseline``: another checkout's ``src``, e.g.
a worktree of main before the round core), alternating child processes so both see the
same machine load. Prints each side's median and minimum wall and CPU seconds (on a
shared machine the minimum is the figure least disturbed by other load), their ratios, and whether both reach the same final
model (SHA-256 of its bytes). ``--strategy`` picks another strategy.

    python benchmarks/round_core_speed.py --baseline /path/to/main/src --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def child(sites: int, rounds: int, strategy: str) -> None:
    sys.path.insert(0, str(HERE))
    from _workload import make_workload
    from fedcare.algorithms.registry import build_strategy
    from fedcare.core.records import TrainSpec
    from fedcare.data.base import FederatedDataset, SiteData
    from fedcare.models import build_model
    from fedcare.sim.engine import FederatedSimulation

    train, test = make_workload(sites)
    data = [
        SiteData(f"site{k:04d}", xtr, ytr, xte, yte)
        for k, ((xtr, ytr), (xte, yte)) in enumerate(zip(train, test, strict=True))
    ]
    dataset = FederatedDataset("bench", data, "binary", 2, (train[0][0].shape[1],))

    def simulate(n: int) -> tuple[float, float, bytes]:
        sim = FederatedSimulation(
            module=build_model("mlp", dataset.input_shape, 2, hidden=(64, 64)),
            dataset=dataset,
            strategy=build_strategy(strategy),
            spec=TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=32),
            rounds=n,
            seed=0,
            mode="batched",
            eval_every=0,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        result = sim.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, result.final_params[0].tobytes()

    simulate(1)  # warm-up: torch.func's first call pays one-off costs
    seconds, cpu, params = simulate(rounds)
    digest = hashlib.sha256(params).hexdigest()
    print("RESULT " + json.dumps({"seconds": seconds, "cpu": cpu, "model": digest}))


def measure(src: Path, args: argparse.Namespace) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", "--sites", str(args.sites)]
    cmd += ["--rounds", str(args.rounds), "--strategy", args.strategy]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"child for {src} failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="the other checkout's src (required)")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.sites, args.rounds, args.strategy)
        return
    if args.baseline is None:
        parser.error("--baseline is required")
    runs: dict[str, list[dict[str, object]]] = {"baseline": [], "round core": []}
    for _ in range(args.repeats):
        runs["baseline"].append(measure(args.baseline.resolve(), args))
        runs["round core"].append(measure(SRC, args))
    models = {k: {r["model"] for r in v} for k, v in runs.items()}
    print(f"{args.sites} sites x {args.rounds} rounds, {args.strategy}, {args.repeats} runs each")
    figures: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        wall = [float(r["seconds"]) for r in results]  # type: ignore[arg-type]
        cpu = [float(r["cpu"]) for r in results]  # type: ignore[arg-type]
        figures[name] = {
            "wall median": statistics.median(wall),
            "wall min": min(wall),
            "CPU median": statistics.median(cpu),
            "CPU min": min(cpu),
        }
        f = figures[name]
        ups = args.sites * args.rounds / f["wall median"]
        print(
            f"  {name:>10}: wall median {f['wall median']:.2f} s ({ups:,.0f} site updates/s), "
            f"min {f['wall min']:.2f} s; CPU median {f['CPU median']:.2f} s, "
            f"min {f['CPU min']:.2f} s"
        )
    ratios = ", ".join(
        f"{key} {figures['round core'][key] / figures['baseline'][key]:.3f}"
        for key in figures["baseline"]
    )
    print(f"  round core / baseline: {ratios}")
    same = models["baseline"] == models["round core"] and len(models["baseline"]) == 1
    print(f"  same final model (bytes): {same}")


if __name__ == "__main__":
    main()
