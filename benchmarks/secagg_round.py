"""Secure aggregation cost: 50 and 200 sites x 100k parameters, 10% dropping mid-round.

The dropouts happen after ShareKeys (they never send a masked input), the expensive case:
the server must rebuild each dropped site's masking key from its neighbours' shares and
strip the pair masks it shared with every surviving neighbour. Runs classic SecAgg (the
complete graph) and SecAgg+ (about 2*log2(n) neighbours), medians of --repeats runs.

Printed per stage: all sites' compute summed (this process runs them one after another),
the slowest site (the critical path when sites run in parallel) and the server, which
expands masks on --workers threads (default: half this machine's cores). Also how many masks
the server expanded. For reference, the time of a plain float32 sum of the same vectors;
the ratio to a full plain training round is in secagg_vs_plain_round.py. Python's garbage
collector is paused while a round runs.

    python benchmarks/secagg_round.py [--sites 50 200] [--params 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import statistics
import time

import numpy as np

from fedcare.secagg import FixedPointRing, SecAggConfig, Stage, secagg_plus_degree, simulate
from fedcare.secagg.masks import default_workers


def run(n: int, length: int, degree: int | None, repeats: int, workers: int) -> None:
    holders = n if degree is None else degree + 1
    config = SecAggConfig(
        session_id=hashlib.sha256(f"bench/{n}/{degree}".encode()).digest()[:16],
        client_ids=tuple(range(n)),
        vector_length=length,
        threshold=holders // 2 + 1,
        ring=FixedPointRing(clip=1.0, max_clients=n),
        degree=degree,
        min_survivors=n // 2 + 1,
    )
    gen = np.random.default_rng(0)
    vectors = {c: gen.normal(0, 0.1, length).astype(np.float32) for c in range(n)}
    dropped = set(random.Random(n).sample(range(n), n // 10))
    outcomes = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            outcome = simulate(
                config, vectors, {Stage.MASKED_INPUT: dropped}, server_workers=workers
            )
        finally:
            gc.enable()
        survivors = [vectors[c] for c in sorted(outcome.result.included)]
        plain = sum(survivors, np.zeros(length, np.float32))
        if not np.allclose(outcome.result.total, plain, atol=n * config.ring.resolution):
            raise RuntimeError("secure sum differs from the plain sum")
        outcomes.append(outcome)
    stacked = np.stack([vectors[c] for c in range(n)])
    plain_times = []
    stacked.sum(axis=0)  # warm-up
    for _ in range(max(repeats, 9)):
        start = time.perf_counter()
        stacked.sum(axis=0)
        plain_times.append(time.perf_counter() - start)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    label = "SecAgg (complete graph)" if degree is None else f"SecAgg+ (degree {degree})"
    survivors = n - len(dropped)
    pairs = sum(len(config.graph.neighbours(d) - dropped) for d in dropped)
    print(
        f"\n{n} sites x {length:,} params, {len(dropped)} drop after ShareKeys, {label}, "
        f"threshold {config.threshold}; the server expands {survivors} self masks + {pairs} "
        f"pair masks on {workers} thread(s)"
    )
    print(f"  {'stage':<16}{'sites, summed':>16}{'slowest site':>16}{'server':>12}")
    for stage in Stage:
        print(
            f"  {stage.name:<16}"
            f"{med([o.timings[stage].clients_total for o in outcomes]):>15.3f}s"
            f"{med([o.timings[stage].clients_max for o in outcomes]):>15.4f}s"
            f"{med([o.timings[stage].server for o in outcomes]):>11.3f}s"
        )
    print(f"  total, one process (all sites in turn): {med([o.sequential for o in outcomes]):.3f}s")
    print(
        f"  critical path (sites in parallel):      {med([o.critical_path for o in outcomes]):.3f}s"
    )
    print(f"  plain float32 sum of the {n} vectors:   {med(plain_times) * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="server mask threads")
    args = parser.parse_args()
    workers = args.workers if args.workers is not None else default_workers(args.params)
    for n in args.sites:
        for degree in (None, secagg_plus_degree(n)):
            run(n, args.params, degree, args.repeats, workers)


if __name__ == "__main__":
    main()
