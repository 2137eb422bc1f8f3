"""Heart study accuracy (issue #2): every strategy of the embedded study, 5 seeds.

Metric: mean over the four hospitals of each hospital's test accuracy (FLamby's), mean ±
std over seeds. Prints each strategy with its hyper-parameters and checks the targets:
best federated >= our pooled baseline, FedAvg >= 0.72. FLamby's published figures for
reference: pooled 0.735, FedAvg 0.685, FedAdam 0.726, FedYogi 0.731.

    python benchmarks/heart_accuracy.py [--seeds 5] [--out benchmarks/out/heart]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedcare.study.presets import heart_demo_config
from fedcare.study.runner import StudyRunner

FLAMBY = {"pooled": 0.735, "fedavg": 0.685, "fedadam": 0.726, "fedyogi": 0.731}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "heart")
    args = parser.parse_args()
    config = heart_demo_config(seeds=list(range(args.seeds)))
    metrics = StudyRunner(config, args.out).run().metrics
    rows = []
    print(f"{'strategy':<16} {'mean-site acc':>15} {'worst site':>15}  FLamby  hyper-parameters")
    for s in metrics["strategies"]:
        acc = s["overall"]["mean_site_accuracy"]
        worst = s["overall"]["worst_site_accuracy"]
        hp = {
            k: v
            for k, v in s["hyperparameters"].items()
            if not k.startswith("local.") and k != "rounds"
        }
        local = {
            k.removeprefix("local."): v
            for k, v in s["hyperparameters"].items()
            if k.startswith("local.")
        }
        ref = FLAMBY.get(s["name"], "")
        print(
            f"{s['name']:<16} {acc['mean']:.3f} ± {acc['std']:.3f}   {worst['mean']:.3f} ± {worst['std']:.3f}"
            f"  {ref!s:>6}  {hp} local={local} rounds={s['hyperparameters'].get('rounds')}"
        )
        rows.append(
            {
                "name": s["name"],
                "kind": s["kind"],
                "mean_site_accuracy": acc,
                "hyperparameters": s["hyperparameters"],
            }
        )
    by_name = {r["name"]: r["mean_site_accuracy"]["mean"] for r in rows}
    federated = {
        r["name"]: r["mean_site_accuracy"]["mean"] for r in rows if r["kind"] == "federated"
    }
    best = max(federated, key=lambda k: federated[k])
    print(
        f"\nbest federated: {best} {federated[best]:.3f} vs our pooled {by_name['pooled']:.3f} "
        f"-> {'MET' if federated[best] >= by_name['pooled'] else 'MISSED'}"
    )
    for name in ("fedavg", "fedavg-uniform"):
        if name in by_name:
            print(
                f"{name}: {by_name[name]:.3f} vs target 0.72 -> {'MET' if by_name[name] >= 0.72 else 'MISSED'}"
            )
    (args.out / "heart_accuracy.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
