"""Site contributions on the heart study (issue #5): Monte-Carlo Shapley against exact.

The utility of a coalition of hospitals is the mean of the four hospitals' test accuracies
of the model that coalition trains with FedAvg (uniform weighting, the embedded study's
local training, 30 rounds, seed 0); the empty coalition scores the untrained model.
Exact Shapley trains all 2^4 = 16 coalitions. Monte-Carlo (permutation sampling, plain and
with fedcare's default stratified + antithetic orders) is run with several permutation
budgets and random seeds over the same memoised utility, so the difference is the
estimator's error alone. Target: within 0.01 of exact for every site.

    python benchmarks/shapley.py [--rounds 30] [--trials 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedcare.algorithms.contribution import (
    CachedUtility,
    exact_shapley,
    leave_one_out,
    monte_carlo_shapley,
)
from fedcare.data.heart import load_heart_disease
from fedcare.study.config import ContributionConfig, LocalConfig
from fedcare.study.contribution import CoalitionUtility

BUDGETS = (8, 16, 48, 96, 200)
SAMPLERS = {
    "plain": {},
    "stratified + antithetic": {"stratified": True, "antithetic": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    dataset = load_heart_disease()
    sites = list(dataset.site_names)
    spec = LocalConfig(optimizer="sgd", lr=0.02, epochs=1, batch_size=16).to_spec()
    config = ContributionConfig(strategy="fedavg", params={"weighting": "uniform"}, seed=0)
    trained = CoalitionUtility(dataset, ("logistic", {}), spec, args.rounds, config)
    utility = CachedUtility(trained)
    start = time.perf_counter()
    exact = exact_shapley(sites, utility)
    elapsed = time.perf_counter() - start
    print(f"exact Shapley: {utility.evaluations} coalitions trained in {elapsed:.1f} s")
    loo = leave_one_out(sites, utility)
    print(f"all sites utility {utility(frozenset(sites)):.4f}, no site {utility(frozenset()):.4f}")
    print(f"{'site':<14} {'exact':>8} {'leave-one-out':>14}")
    for s in sites:
        print(f"{s:<14} {exact[s]:+8.4f} {loo[s]:+14.4f}")
    print(f"sum of exact values {sum(exact.values()):+.4f} (= all - none)")
    print(f"\nMonte-Carlo: max |estimate - exact| over sites, {args.trials} random seeds each")
    for sampler, options in SAMPLERS.items():
        default = " (fedcare's default)" if options else ""
        print(f"  {sampler} sampling{default}")
        for budget in BUDGETS:
            errors = []
            for trial in range(args.trials):
                est = monte_carlo_shapley(
                    sites,
                    utility,
                    permutations=budget,
                    rng=np.random.default_rng(1000 + trial),
                    **options,
                )
                errors.append(max(abs(est[s].value - exact[s]) for s in sites))
            med = float(np.median(errors))
            verdict = "MET" if max(errors) <= 0.01 else ("median MET" if med <= 0.01 else "MISSED")
            print(
                f"    {budget:4d} permutations: median {med:.4f}, worst {max(errors):.4f}"
                f"  -> {verdict} (<= 0.01)"
            )


if __name__ == "__main__":
    main()
