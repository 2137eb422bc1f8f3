"""Heart study with client-level DP and secure aggregation (issue #4), 5 seeds.

Side by side, same seeds, the embedded study's local training (SGD lr 0.02, batch 16):

* FedAvg (uniform weights), no protection: the reference;
* FedAvg under secure aggregation (SecAgg: real masks and Shamir shares) and under CKKS;
* DP-FedAvg with central noise at epsilon 1 and 3 (delta 1e-5, clip C);
* DP-FedAvg with distributed noise (each hospital adds its share) under SecAgg, epsilon 3.

Client-level DP protects each hospital's whole contribution. With only four hospitals,
all taking part every round (no amplification by sampling), the noise needed is large;
fewer rounds spend less privacy, so DP runs are also shown with 5 rounds of 6 local epochs.

    python benchmarks/privacy_heart.py [--seeds 5] [--clip 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedcare.study.config import StudyConfig
from fedcare.study.runner import StudyRunner


def strategies(clip: float) -> list[dict]:
    secagg = {"kind": "secure_aggregation", "value_range": 1.0}
    out: list[dict] = [
        {"name": "fedavg", "label": "fedavg", "params": {"weighting": "uniform"}},
        {
            "name": "fedavg",
            "label": "fedavg + SecAgg",
            "params": {"weighting": "uniform", "secure": secagg},
        },
        {
            "name": "fedavg",
            "label": "fedavg + CKKS",
            "params": {"weighting": "uniform", "secure": "encrypt"},
        },
    ]
    for eps in (1.0, 3.0):
        out.append(
            {
                "name": "fedavg",
                "label": f"central DP ε={eps:g}",
                "params": {"dp": {"epsilon": eps, "delta": 1e-5, "clip_norm": clip}},
            }
        )
        out.append(
            {
                "name": "fedavg",
                "label": f"central DP ε={eps:g}, 5 rounds x 6 epochs",
                "params": {"dp": {"epsilon": eps, "delta": 1e-5, "clip_norm": clip}},
                "local": {"optimizer": "sgd", "lr": 0.02, "epochs": 6, "batch_size": 16},
            }
        )
    out.append(
        {
            "name": "fedavg",
            "label": "distributed DP ε=3 + SecAgg",
            "params": {
                "dp": {"mode": "distributed", "epsilon": 3.0, "delta": 1e-5, "clip_norm": clip},
                "secure": {**secagg, "value_range": 2.0},
            },
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clip", type=float, default=0.5)
    args = parser.parse_args()
    all_strategies = strategies(args.clip)
    short = [s for s in all_strategies if "5 rounds" in s["label"]]
    long = [s for s in all_strategies if "5 rounds" not in s["label"]]
    rows = []
    for rounds, group in ((30, long), (5, short)):
        config = StudyConfig.model_validate(
            {
                "name": "heart-privacy",
                "dataset": {"name": "heart-disease"},
                "model": {"name": "logistic"},
                "seeds": list(range(args.seeds)),
                "rounds": rounds,
                "local": {"optimizer": "sgd", "lr": 0.02, "epochs": 1, "batch_size": 16},
                "baselines": [],
                "explain": False,
                "strategies": group,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            metrics = StudyRunner(config, Path(tmp)).run().metrics
        for s in metrics["strategies"]:
            acc = s["overall"]["mean_site_accuracy"]
            eps = s.get("privacy", {}).get("epsilon", {}).get("mean")
            rows.append((s["label"], rounds, acc["mean"], acc["std"], eps, s["wall_time_s"]))
    reference = next(r for r in rows if r[0] == "fedavg")[2]
    print(
        f"{'strategy':<40} {'rounds':>6} {'mean-site acc':>16} {'vs fedavg':>9} {'epsilon':>8} {'s/run':>6}"
    )
    for label, rounds, mean, std, eps, wall in rows:
        eps_text = "—" if eps is None else f"{eps:.3f}"
        print(
            f"{label:<40} {rounds:>6} {mean:.3f} ± {std:.3f}    {mean - reference:+.3f} {eps_text:>8} {wall:6.1f}"
        )


if __name__ == "__main__":
    main()
