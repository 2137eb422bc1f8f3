"""Kaplan-Meier, Greenwood and the log-rank test from summed counts (pure maths).

Everything here takes the pooled numbers at risk and events at a sorted set of times, which
are sums of the sites' own counts: so the federated curve *is* the pooled curve, to the last
rounding. The formulas follow lifelines (the reference the tests pin): the survival is
``exp(cumsum(log(n - d) - log(n)))``, Greenwood's sum skips terms where everyone at risk
died, and the confidence interval is the exponential-Greenwood (log(-log)) one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class KaplanMeierCurve:
    """A step function: ``survival[k]`` holds on ``[times[k], times[k+1])``; 1 before
    ``times[0]``. ``variance_sum`` is Greenwood's cumulative sum (lifelines'
    ``_cumulative_sq_``)."""

    times: FloatArray
    at_risk: FloatArray
    events: FloatArray
    survival: FloatArray
    variance_sum: FloatArray
    lower: FloatArray
    upper: FloatArray

    def at(self, t: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Survival and its interval at times ``t`` (right-continuous steps)."""
        index = np.searchsorted(self.times, np.asarray(t, dtype=np.float64), side="right") - 1
        before = index < 0
        safe = np.where(before, 0, index)
        pick = [np.where(before, 1.0, a[safe]) for a in (self.survival, self.lower, self.upper)]
        return pick[0], pick[1], pick[2]

    def median(self) -> float:
        """The first time the survival is at or below 0.5 (inf if it never is)."""
        below = np.flatnonzero(self.survival <= 0.5)
        return float(self.times[below[0]]) if below.size else float("inf")


def kaplan_meier(
    times: FloatArray, at_risk: FloatArray, events: FloatArray, alpha: float = 0.05
) -> KaplanMeierCurve:
    """The Kaplan-Meier curve with exponential-Greenwood ``1 - alpha`` intervals."""
    n = np.asarray(at_risk, dtype=np.float64)
    d = np.asarray(events, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A time nobody is at risk at (a group's tail on a shared grid) changes nothing.
        log_survival = np.cumsum(np.where(n > 0, np.log(n - d) - np.log(n), 0.0))
        term = d / (n * (n - d))
    # lifelines: a term where all at risk died (n == d) is dropped, not infinite; a time
    # nobody is at risk at (n == 0) adds nothing.
    term = np.where(np.isinf(term) | np.isnan(term), 0.0, term)
    variance_sum = np.cumsum(term)
    survival = np.exp(log_survival)
    lower, upper = exponential_greenwood(survival, variance_sum, alpha)
    return KaplanMeierCurve(
        times=np.asarray(times, dtype=np.float64),
        at_risk=n,
        events=d,
        survival=survival,
        variance_sum=variance_sum,
        lower=lower,
        upper=upper,
    )


def exponential_greenwood(
    survival: FloatArray, variance_sum: FloatArray, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """The log(-log) interval; 1.0 where it is undefined (survival 1), as lifelines fills."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(survival)
        spread = z * np.sqrt(variance_sum) / v
        lower = np.exp(-np.exp(np.log(-v) - spread))
        upper = np.exp(-np.exp(np.log(-v) + spread))
    return np.nan_to_num(lower, nan=1.0), np.nan_to_num(upper, nan=1.0)


@dataclass(frozen=True)
class LogRankTest:
    """The k-group log-rank test: chi-squared ``statistic`` on ``df`` degrees of freedom;
    ``observed``/``expected`` events per group."""

    statistic: float
    df: int
    p_value: float
    observed: FloatArray
    expected: FloatArray


def logrank(at_risk: FloatArray, events: FloatArray) -> LogRankTest:
    """Log-rank test across groups from per-group counts (groups x times) at every time at
    which any group has an event; lifelines' ``multivariate_logrank_test`` (equal to
    ``logrank_test`` for two groups): ``U = Z' V^+ Z`` over the first ``k - 1`` groups."""
    n_gk = np.asarray(at_risk, dtype=np.float64)
    d_gk = np.asarray(events, dtype=np.float64)
    groups = n_gk.shape[0]
    if groups < 2:
        raise ValueError(f"a log-rank test needs at least two groups, found {groups}")
    n = n_gk.sum(axis=0)
    d = d_gk.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_gk = n_gk * (d / n)
        tie = (n - d) / (n - 1)
    expected_gk = np.nan_to_num(expected_gk, nan=0.0)
    tie = np.where(np.isinf(tie) | np.isnan(tie), 1.0, tie)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.nan_to_num(tie * d / n**2, nan=0.0)
    observed = d_gk.sum(axis=1)
    expected = expected_gk.sum(axis=1)
    z = observed - expected
    # Hypergeometric covariance: V_gh = sum_k f_k (n_k n_gk [g == h] - n_gk n_hk).
    weighted = n_gk * factor
    covariance = -weighted @ n_gk.T
    covariance[np.diag_indices(groups)] += weighted @ n
    keep = groups - 1
    statistic = float(z[:keep] @ np.linalg.pinv(covariance[:keep, :keep]) @ z[:keep])
    return LogRankTest(
        statistic=statistic,
        df=keep,
        p_value=float(stats.chi2.sf(statistic, keep)),
        observed=observed,
        expected=expected,
    )


def merge_small_cells(
    bins: IntArray, event: FloatArray, n_bins: int, min_cell: int
) -> tuple[IntArray, bool]:
    """Coarsen one site's binned rows until every released count is 0 or >= ``min_cell``.

    ``bins[i]`` is the grid bin row ``i`` leaves the risk set at. Walking the grid upwards,
    adjacent bins are merged until both their event count and their censored count are 0 or
    at least ``min_cell``; a merged run is reported at its *last* bin, so an event is only
    ever moved later (to an upper edge), never earlier. A short run left at the end is merged
    backwards into the runs before it. Returns the new bins and whether it could be done
    (False when the site's total events or censored are themselves between 1 and
    ``min_cell - 1``: then nothing may be released).
    """
    died = np.bincount(bins, weights=event, minlength=n_bins)
    censored = np.bincount(bins, weights=1.0 - event, minlength=n_bins)

    def fine(e: float, c: float) -> bool:
        return (e == 0 or e >= min_cell) and (c == 0 or c >= min_cell)

    if not fine(float(died.sum()), float(censored.sum())):
        return bins, False
    runs: list[list[float]] = []  # [first bin, last bin, events, censored]
    open_run: list[float] | None = None
    for k in range(n_bins):
        if died[k] == 0 and censored[k] == 0 and open_run is None:
            continue
        if open_run is None:
            open_run = [k, k, 0.0, 0.0]
        open_run[1], open_run[2], open_run[3] = k, open_run[2] + died[k], open_run[3] + censored[k]
        if fine(open_run[2], open_run[3]):
            runs.append(open_run)
            open_run = None
    if open_run is not None:
        runs.append(open_run)
    while len(runs) > 1 and not fine(runs[-1][2], runs[-1][3]):
        tail = runs.pop()
        runs[-1] = [runs[-1][0], tail[1], runs[-1][2] + tail[2], runs[-1][3] + tail[3]]
    target = np.arange(n_bins, dtype=np.int64)
    for first, end, _, _ in runs:
        target[int(first) : int(end) + 1] = int(end)
    return target[bins], True
