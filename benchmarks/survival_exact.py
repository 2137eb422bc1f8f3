"""Federated survival analysis against lifelines on the pooled rows: how exact, how fast.

Side by side in one process, on Fed-TCGA-BRCA (six regions, 1,088 patients; the package's
``tcga-brca`` dataset, all rows) and on a synthetic table with heavy ties (four sites, times
rounded up to 30-day multiples):

- Kaplan-Meier (exact mode, over the sites): the largest difference from lifelines'
  ``KaplanMeierFitter`` on the pooled rows, in the survival and both interval bounds, at every
  time of lifelines' timeline; the log-rank statistic against ``multivariate_logrank_test``;
- Cox (Efron): the largest relative difference in coefficients, standard errors and
  log-likelihood from ``CoxPHFitter`` (default options, and run to full convergence), the
  number of Newton iterations, pooled and stratified (strata = site, and by a column);
- C-index: per site and pooled against lifelines' ``concordance_index``;
- wall time: the federated analysis (``run_in_process``, every site's computation included)
  and lifelines on the pooled rows, median of ``--repeats`` runs, and their ratio.

TCGA-BRCA's 39 one-hot features are collinear (rank 33 with the intercept) and some nearly
so (every patient but one has exactly one race column set), so the unpenalised Cox fits use
age and the AJCC pathologic stage, T, N and M columns (16 covariates), and all 39 are
fitted with a small L2 ``--penalizer``.

    .venv/bin/python benchmarks/survival_exact.py              # 3 repeats
    .venv/bin/python benchmarks/survival_exact.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from lifelines.utils import concordance_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcare.stats.concordance import Concordance
from fedcare.stats.cox import CoxPH
from fedcare.stats.protocol import AnalysisResult, DisclosureRules, SiteTable, run_in_process
from fedcare.stats.site_tables import tcga_brca_site_tables
from fedcare.stats.survival import KaplanMeier, curves
from tests.stats.survival_data import survival_sites, tables_of

OFF = DisclosureRules(min_cell=1)
TIGHT = {"precision": 1e-14, "r_precision": 1e-16}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """The last result and the median wall time of ``repeats`` runs."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def pooled_rows(tables: dict[str, SiteTable]) -> pd.DataFrame:
    return pd.concat([t.frame.assign(site=s) for s, t in tables.items()], ignore_index=True)


def rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def km_report(
    name: str, tables: dict[str, SiteTable], group: str, levels: list[str], repeats: int
) -> None:
    rows = pooled_rows(tables)
    analysis = KaplanMeier("km", group=group, levels=levels)
    result, fed_s = timed(lambda: run_in_process(analysis, tables, OFF), repeats)

    def reference() -> tuple[KaplanMeierFitter, Any]:
        fit = KaplanMeierFitter().fit(rows["T"], rows["E"])
        test = multivariate_logrank_test(rows["T"], rows[group].astype(str), rows["E"])
        return fit, test

    (fit, test), ref_s = timed(reference, repeats)
    timeline = fit.survival_function_.index.to_numpy()
    survival, lower, upper = curves(result)["overall"].at(timeline)
    ci = fit.confidence_interval_.to_numpy()
    worst = max(
        float(np.max(np.abs(survival - fit.survival_function_.to_numpy()[:, 0]))),
        float(np.max(np.abs(lower - ci[:, 0]))),
        float(np.max(np.abs(upper - ci[:, 1]))),
    )
    for level in levels:
        part = rows[rows[group].astype(str) == level]
        ref = KaplanMeierFitter().fit(part["T"], part["E"])
        s, lo, up = curves(result)[level].at(ref.survival_function_.index.to_numpy())
        ci = ref.confidence_interval_.to_numpy()
        worst = max(
            worst,
            float(np.max(np.abs(s - ref.survival_function_.to_numpy()[:, 0]))),
            float(np.max(np.abs(lo - ci[:, 0]))),
            float(np.max(np.abs(up - ci[:, 1]))),
        )
    statistic = result.tables["logrank"]["statistic"]
    print(
        f"KM   {name:<24} times {len(timeline):>4}  max |S, lower, upper - lifelines| {worst:.1e}  "
        f"log-rank ({group}) {statistic:.6f} |diff| {abs(statistic - test.test_statistic):.1e}  "
        f"federated {fed_s * 1e3:.1f} ms, lifelines {ref_s * 1e3:.1f} ms, ratio {fed_s / ref_s:.2f}"
    )


def cox_report(
    name: str,
    tables: dict[str, SiteTable],
    covariates: list[str],
    repeats: int,
    strata: str | None = None,
    levels: tuple[str, ...] = (),
    penalizer: float = 0.0,
) -> None:
    rows = pooled_rows(tables)
    analysis = CoxPH("cox", covariates, strata=strata, levels=levels, penalizer=penalizer)
    result, fed_s = timed(lambda: run_in_process(analysis, tables, OFF), repeats)
    columns = [*covariates, "T", "E", *([strata] if strata else [])]
    strata_arg = [strata] if strata else None

    def fit(options: dict[str, float] | None) -> CoxPHFitter:
        return CoxPHFitter(penalizer=penalizer).fit(
            rows[columns], "T", "E", strata=strata_arg, fit_options=options
        )

    default, ref_s = timed(lambda: fit(None), repeats)
    tight = fit(TIGHT)
    t = result.tables
    diffs = []
    for ref in (default, tight):
        diffs.append(
            (
                rel(t["coef"], ref.params_),
                rel(t["se"], ref.standard_errors_),
                rel(t["log_likelihood"], ref.log_likelihood_),
            )
        )
    label = f"{name}, {strata or 'no'} strata" + (f", L2 {penalizer:g}" if penalizer else "")
    print(
        f"Cox  {label:<40} p={len(covariates):>2} iterations {t['iterations']:>2}  "
        f"rel diff coef/se/loglik vs lifelines default {diffs[0][0]:.1e}/{diffs[0][1]:.1e}/{diffs[0][2]:.1e}, "
        f"converged {diffs[1][0]:.1e}/{diffs[1][1]:.1e}/{diffs[1][2]:.1e}  "
        f"federated {fed_s:.2f} s, lifelines {ref_s:.2f} s, ratio {fed_s / ref_s:.2f}"
    )
    if penalizer == 0.0 and strata is None:
        c_report(name, tables, covariates, t["coef"], rows, repeats)


def c_report(
    name: str,
    tables: dict[str, SiteTable],
    covariates: list[str],
    coef: list[float],
    rows: pd.DataFrame,
    repeats: int,
) -> None:
    result: AnalysisResult
    result, fed_s = timed(
        lambda: run_in_process(Concordance("c", covariates, coef), tables, OFF), repeats
    )

    def c_of(frame: pd.DataFrame) -> float:
        return float(
            concordance_index(
                frame["T"], -(frame[covariates].to_numpy() @ np.asarray(coef)), frame["E"]
            )
        )

    pooled_c, ref_s = timed(lambda: c_of(rows), repeats)
    per_site = max(
        abs(result.tables["per_site"][s]["c_index"] - c_of(t.frame)) for s, t in tables.items()
    )
    print(
        f"C    {name:<24} pooled {result.tables['pooled']['c_index']:.4f} |diff| "
        f"{abs(result.tables['pooled']['c_index'] - pooled_c):.1e}, mean of sites "
        f"{result.tables['mean_of_sites']:.4f}, max per-site |diff| {per_site:.1e}  "
        f"federated {fed_s * 1e3:.1f} ms, lifelines pooled {ref_s * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--penalizer", type=float, default=0.01)
    args = parser.parse_args()

    tcga = tcga_brca_site_tables()
    features = [c for c in next(iter(tcga.values())).frame.columns if c not in ("T", "E")]
    rank = [c for c in features if c.startswith(("age_at_index", "ajcc_pathologic"))]
    stage = "ajcc_pathologic_stage_Stage IIA"
    events = sum(int(t.frame["E"].sum()) for t in tcga.values())
    print(
        f"TCGA-BRCA: {sum(len(t.frame) for t in tcga.values())} rows, {events} events, {len(tcga)} regions"
    )
    km_report("TCGA-BRCA", tcga, stage, ["0.0", "1.0"], args.repeats)
    cox_report("TCGA-BRCA", tcga, rank, args.repeats)
    cox_report("TCGA-BRCA", tcga, rank, args.repeats, strata="site")
    cox_report("TCGA-BRCA", tcga, features, args.repeats, penalizer=args.penalizer)
    cox_report("TCGA-BRCA", tcga, features, args.repeats, strata="site", penalizer=args.penalizer)

    ties = tables_of(survival_sites([400, 250, 600, 150], seed=2026, tie_days=30.0))
    rows = pooled_rows(ties)
    print(
        f"\nheavy ties: {len(rows)} rows over {len(ties)} sites, {rows['T'].nunique()} distinct times, "
        f"{int(rows['E'].sum())} events"
    )
    arms = ["control", "drug", "surgery"]
    km_report("heavy ties", ties, "arm", arms, args.repeats)
    covariates = ["age", "sex", "marker"]
    cox_report("heavy ties", ties, covariates, args.repeats)
    cox_report("heavy ties", ties, covariates, args.repeats, strata="site")
    cox_report("heavy ties", ties, covariates, args.repeats, strata="arm", levels=tuple(arms))


if __name__ == "__main__":
    main()
