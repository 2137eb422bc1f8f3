"""Personalisation on the heart study (issue #5): FLamby protocol, 5 seeds.

Each personalised method is compared with the local-only model of the same architecture
(site by site) and with our pooled baselines, on the mean of per-site test accuracies.
Target: the best personalised method beats the pooled baseline, and no site ends worse
than with its local-only model.

    python benchmarks/personalisation.py [--seeds 5] [--rounds 30]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.data.heart import load_heart_disease
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation, IsolatedTraining

SPEC = TrainSpec(optimizer="sgd", lr=0.02, batch_size=16, epochs=1)
MLP = ("mlp", {"hidden": (16,)})
LOGISTIC: tuple[str, dict[str, Any]] = ("logistic", {})

METHODS: list[tuple[str, str, tuple[str, dict[str, Any]], dict[str, Any]]] = [
    # label, strategy, model, strategy params
    (
        "ditto (logistic, lambda 0.1)",
        "ditto",
        LOGISTIC,
        {"ditto_lambda": 0.1, "weighting": "uniform"},
    ),
    ("scaffold + fine-tune 10 (logistic)", "scaffold", LOGISTIC, {"finetune_epochs": 10}),
    ("fedper (mlp 16)", "fedper", MLP, {"weighting": "uniform"}),
    (
        "fedbn (mlp 16 + batch norm)",
        "fedbn",
        ("mlp", {"hidden": (16,), "norm": True}),
        {"weighting": "uniform"},
    ),
    ("ditto (mlp 16, lambda 0.1)", "ditto", MLP, {"ditto_lambda": 0.1, "weighting": "uniform"}),
    ("mocha (logistic, lambda1 0.3)", "mocha", LOGISTIC, {"lambda1": 0.3, "lambda2": 0.01}),
]


def per_site(result, sites: list[str]) -> np.ndarray:
    return np.array([result.final_eval[s].accuracy for s in sites])


def isolated(dataset, model, pooled: bool, seeds: int, rounds: int) -> np.ndarray:
    return np.mean(
        [
            per_site(
                IsolatedTraining(
                    module=build_model(model[0], dataset.input_shape, 2, **model[1]),
                    dataset=dataset,
                    spec=SPEC,
                    rounds=rounds,
                    seed=s,
                    pooled=pooled,
                    eval_every=0,
                ).run(),
                dataset.site_names,
            )
            for s in range(seeds)
        ],
        axis=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    ds = load_heart_disease()
    sites = ds.site_names
    print(f"{'':36}" + "".join(f"{s:>12}" for s in sites) + f"{'mean':>9}")
    local = {m[0]: isolated(ds, m, False, args.seeds, args.rounds) for m in (LOGISTIC, MLP)}
    pooled = {m[0]: isolated(ds, m, True, args.seeds, args.rounds) for m in (LOGISTIC, MLP)}
    for name in ("logistic", "mlp"):
        for label, acc in (("local", local[name]), ("pooled", pooled[name])):
            print(
                f"{label + ' (' + name + ')':36}"
                + "".join(f"{a:12.3f}" for a in acc)
                + f"{acc.mean():9.3f}"
            )
    best_pooled = max(p.mean() for p in pooled.values())
    best = ("", 0.0, False)
    for label, strategy, model, params in METHODS:
        acc = np.mean(
            [
                per_site(
                    FederatedSimulation(
                        module=build_model(model[0], ds.input_shape, 2, **model[1]),
                        dataset=ds,
                        strategy=build_strategy(strategy, params),
                        spec=SPEC,
                        rounds=args.rounds,
                        seed=s,
                        eval_every=0,
                    ).run(),
                    sites,
                )
                for s in range(args.seeds)
            ],
            axis=0,
        )
        reference = local["mlp" if model[0] == "mlp" else "logistic"]
        no_site_worse = bool(np.all(acc >= reference - 1e-9))
        worst_gap = float((acc - reference).min())
        print(
            f"{label:36}" + "".join(f"{a:12.3f}" for a in acc) + f"{acc.mean():9.3f}"
            f"   vs local: worst site {worst_gap:+.3f}{'' if no_site_worse else '  (a site is worse)'}"
        )
        if acc.mean() > best[1]:
            best = (label, float(acc.mean()), no_site_worse)
    print(
        f"\nbest personalised: {best[0]} {best[1]:.3f} vs best pooled {best_pooled:.3f} -> "
        f"{'MET' if best[1] > best_pooled else 'MISSED'}; no site worse than local-only: "
        f"{'MET' if best[2] else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
