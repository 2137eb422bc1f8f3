"""Secure Kaplan-Meier (SecAgg, CKKS) against the plain federated Kaplan-Meier: wall time.

The same analysis (``stats.survival.KaplanMeier``) is driven to its result three ways, in
one process, interleaved, over the same site tables:

* plain: every ``sum`` question combined in the clear (``stats.protocol.combine``), as
  ``run_in_process`` does;
* secagg: every ``sum`` question through the real SecAgg protocol (``stats.secure``:
  X25519 key agreement, Shamir shares, pairwise and self masks, unmasking) carrying the
  releases as exact integer limbs;
* ckks: the same through TenSEAL CKKS with the key held by the sites.

Each run is split into the sites' computations, the combination of their releases and the
coordinator's analysis steps; the figure is the median over --repeats runs of the whole.
Every secure result is checked equal to the plain one (the counts exactly). Workloads:
Fed-TCGA-BRCA's six regions, exact mode (event times and counts; min_cell 1, which exact
mode needs) and on a monthly grid with min_cell 5; and a synthetic table of 6 sites x 5,000
rows with weekly (heavily tied) times, exact, by two arms with the log-rank test.

Not counted, in the plain run's favour in a deployment: the secure sum's extra round trips
(SecAgg has four stages); messages pass in memory here.

    python benchmarks/secure_km.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from fedcare.stats.protocol import (
    Analysis,
    AnalysisResult,
    DisclosureRules,
    SiteTable,
    Step,
    answer,
    combine,
)
from fedcare.stats.secure import Secure, SecureSummer
from fedcare.stats.site_tables import tcga_brca_site_tables
from fedcare.stats.survival import KaplanMeier

KINDS: tuple[Secure, ...] = ("none", "secagg", "ckks")


def drive(
    analysis: Analysis, tables: Mapping[str, SiteTable], rules: DisclosureRules, kind: Secure
) -> tuple[AnalysisResult, dict[str, float]]:
    """run_secure's loop, timed by part: sites, combining, coordinator."""
    summer = SecureSummer(kind)
    spent = {"sites": 0.0, "combine": 0.0, "coordinator": 0.0}
    clock = time.perf_counter
    start = clock()
    outcome: Step | AnalysisResult = analysis.start()
    spent["coordinator"] += clock() - start
    while isinstance(outcome, Step):
        step = outcome
        t0 = clock()
        releases = {site: answer(step.question, table, rules) for site, table in tables.items()}
        t1 = clock()
        combined = (
            summer.combine(step.question, releases)
            if kind != "none"
            else combine(step.question, releases)
        )
        t2 = clock()
        outcome = analysis.advance(step, combined)
        t3 = clock()
        spent["sites"] += t1 - t0
        spent["combine"] += t2 - t1
        spent["coordinator"] += t3 - t2
    spent["total"] = sum(spent.values())
    return outcome, spent


def same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or bool(np.isclose(a, b, rtol=1e-12, atol=0.0))
    return a == b


def synthetic(sites: int, rows: int, seed: int = 0) -> dict[str, SiteTable]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(sites):
        group = rng.integers(0, 2, rows)
        time_ = np.ceil(rng.exponential(400 * (1 + 0.5 * group), rows) / 7) * 7  # weekly: ties
        event = (rng.random(rows) < 0.6).astype(float)
        frame = pd.DataFrame({"T": time_, "E": event, "arm": np.where(group == 1, "B", "A")})
        out[f"s{s}"] = SiteTable(f"s{s}", frame, time="T", event="E")
    return out


def workloads() -> list[tuple[str, Callable[[], Analysis], dict[str, SiteTable], DisclosureRules]]:
    tcga = tcga_brca_site_tables()
    month = 365.25 / 12
    grid = [round(month * k, 2) for k in range(1, 12 * 12)]
    return [
        ("TCGA-BRCA, exact", lambda: KaplanMeier("km"), tcga, DisclosureRules(min_cell=1)),
        (
            "TCGA-BRCA, monthly grid, min_cell 5",
            lambda: KaplanMeier("km", mode="grid", grid=grid),
            tcga,
            DisclosureRules(min_cell=5),
        ),
        (
            "synthetic 6 x 5,000, exact, by arm",
            lambda: KaplanMeier("km", group="arm", levels=["A", "B"]),
            synthetic(6, 5000),
            DisclosureRules(min_cell=1),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"secure KM vs plain federated KM, medians of {args.repeats} runs (seconds)")
    for name, make, tables, rules in workloads():
        reference, _ = drive(make(), tables, rules, "none")
        for kind in KINDS[1:]:  # warm-up (imports, TenSEAL), and the equality check
            result, _ = drive(make(), tables, rules, kind)
            if not same(result.tables, reference.tables):
                print(f"{name}: {kind} result differs from the plain one", file=sys.stderr)
                return 1
        times: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:
                gc.collect()
                gc.disable()
                try:
                    times[kind].append(drive(make(), tables, rules, kind)[1])
                finally:
                    gc.enable()
        median = {
            k: {p: statistics.median(t[p] for t in times[k]) for p in times[k][0]} for k in KINDS
        }
        plain = median["none"]["total"]
        print(f"\n{name}: {sum(len(t.frame) for t in tables.values())} rows, {len(tables)} sites")
        print(f"{'':8} {'total':>8} {'ratio':>6} {'sites':>8} {'combine':>8} {'coord':>8}")
        for kind in KINDS:
            m = median[kind]
            print(
                f"{kind:8} {m['total']:8.4f} {m['total'] / plain:6.2f} {m['sites']:8.4f} "
                f"{m['combine']:8.4f} {m['coordinator']:8.4f}"
            )
        print("secure results equal the plain one: yes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
