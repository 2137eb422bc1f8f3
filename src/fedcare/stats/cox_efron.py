"""The Cox partial likelihood with Efron's ties, from risk-set sums (pure maths).

For a risk set at event time ``t`` (everyone in the stratum with time >= t) and weights
``w = exp(x'b)``, the sums ``S0 = sum w``, ``S1 = sum w x``, ``S2 = sum w x x'`` and the same
sums ``D0, D1, D2`` over the ``d`` events tied at ``t`` are all the Efron likelihood needs:

    loglik = b' sum_events x - sum_t sum_{l<d} log(S0 - l/d D0)
    score  = sum_events x - sum_t sum_{l<d} (S1 - l/d D1) / (S0 - l/d D0)
    info   = sum_t sum_{l<d} [(S2 - l/d D2) / (S0 - l/d D0) - z z'],  z = (S1 - l/d D1) / (...)

Every one of those sums is a sum over rows, so a site's sums over its own rows add up to
the pooled sums: summing the sites' :func:`risk_set_sums` and then calling
:func:`efron_from_sums` gives the pooled likelihood, score and information exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RiskSetSums:
    """Sums at each (stratum, event time) key: ``d`` events, risk-set sums ``s0, s1, s2``,
    tied-event sums ``d0, d1, d2``; ``x_events``: the covariates summed over all events."""

    d: FloatArray
    s0: FloatArray
    s1: FloatArray
    s2: FloatArray
    d0: FloatArray
    d1: FloatArray
    d2: FloatArray
    x_events: FloatArray


def risk_set_sums(
    time: FloatArray,
    event: FloatArray,
    x: FloatArray,
    stratum: IntArray,
    beta: FloatArray,
    key_strata: IntArray,
    key_times: FloatArray,
    entry: FloatArray | None = None,
) -> RiskSetSums:
    """One site's sums at the given keys (a key's stratum and event time); rows of a stratum
    with no key add nothing (another site's keys cover the events elsewhere).

    Rows are bucketed by the last key at or before their time: the risk set at key ``j`` is
    every bucket from ``j`` on, so its sums are suffix sums over the buckets (no per-row
    ``p x p`` array is ever built). With delayed ``entry`` a row is at risk only at keys
    ``t > entry``: the rows not yet entered (bucketed the same way by entry) come off.
    """
    p = x.shape[1]
    k = len(key_times)
    # A Newton step that overshoots can overflow here; the coordinator sees a NaN
    # log-likelihood and halves the step.
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.exp(x @ beta)
    died = event == 1
    out = RiskSetSums(
        d=np.zeros(k),
        s0=np.zeros(k),
        s1=np.zeros((k, p)),
        s2=np.zeros((k, p, p)),
        d0=np.zeros(k),
        d1=np.zeros((k, p)),
        d2=np.zeros((k, p, p)),
        x_events=x[died].sum(axis=0),
    )
    unkeyed = np.setdiff1d(stratum[died], key_strata)
    if unkeyed.size:
        raise ValueError(f"events in stratum {int(unkeyed[0])} have no key")
    for s in np.unique(key_strata):
        keys = np.flatnonzero(key_strata == s)
        keys = keys[np.argsort(key_times[keys], kind="stable")]
        times = key_times[keys]
        rows = np.flatnonzero(stratum == s)
        rows = rows[np.argsort(time[rows], kind="stable")]
        bucket = np.searchsorted(times, time[rows], "right") - 1
        s0, s1, s2 = _segment_sums(x[rows], w[rows], bucket, len(keys))
        if entry is not None:
            late = rows[np.argsort(entry[rows], kind="stable")]
            entered = np.searchsorted(times, entry[late], "right") - 1
            e0, e1, e2 = _segment_sums(x[late], w[late], entered, len(keys))
            s0, s1, s2 = s0 - e0, s1 - e1, s2 - e2
        with np.errstate(over="ignore", invalid="ignore"):
            out.s0[keys] = np.cumsum(s0[::-1])[::-1]
            out.s1[keys] = np.cumsum(s1[::-1], axis=0)[::-1]
            out.s2[keys] = np.cumsum(s2[::-1], axis=0)[::-1]
        events = rows[died[rows]]
        at = np.searchsorted(times, time[events], "left")
        found = at < len(keys)
        found[found] &= times[at[found]] == time[events][found]
        if not found.all():
            raise ValueError(
                f"an event at time {time[events][~found][0]!r} has no key in its stratum"
            )
        d0, d1, d2 = _segment_sums(x[events], w[events], at, len(keys))
        out.d[keys] = np.bincount(at, minlength=len(keys))
        out.d0[keys], out.d1[keys], out.d2[keys] = d0, d1, d2
    return out


def _segment_sums(
    x: FloatArray, w: FloatArray, segment: IntArray, count: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Sums of ``w``, ``w x`` and ``w x x'`` per segment ``0..count-1`` of rows sorted by
    segment (rows in segment -1 are left out)."""
    p = x.shape[1]
    sums0, sums1, sums2 = np.zeros(count), np.zeros((count, p)), np.zeros((count, p, p))
    starts = np.searchsorted(segment, np.arange(count), "left")
    ends = np.searchsorted(segment, np.arange(count), "right")
    with np.errstate(over="ignore", invalid="ignore"):
        for j in np.flatnonzero(ends > starts):
            xs, ws = x[starts[j] : ends[j]], w[starts[j] : ends[j]]
            wx = ws[:, None] * xs
            sums0[j] = ws.sum()
            sums1[j] = wx.sum(axis=0)
            sums2[j] = wx.T @ xs
    return sums0, sums1, sums2


def efron_from_sums(sums: RiskSetSums, beta: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """Efron log partial likelihood, score and observed information at ``beta``."""
    loglik = float(beta @ sums.x_events)
    score = sums.x_events.copy()
    info = np.zeros((len(beta), len(beta)))
    d = sums.d
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for level in range(int(d.max()) if d.size else 0):
            loglik, score, info = _add_tie_level(sums, level, loglik, score, info)
    return loglik, score, info


def _add_tie_level(
    sums: RiskSetSums, level: int, loglik: float, score: FloatArray, info: FloatArray
) -> tuple[float, FloatArray, FloatArray]:
    """The terms of the ``level``-th of the tied events at every key with more than ``level``."""
    keys = sums.d > level
    frac = level / sums.d[keys]
    den = sums.s0[keys] - frac * sums.d0[keys]
    num1 = sums.s1[keys] - frac[:, None] * sums.d1[keys]
    num2 = sums.s2[keys] - frac[:, None, None] * sums.d2[keys]
    z = num1 / den[:, None]
    loglik -= float(np.log(den).sum())
    score = score - z.sum(axis=0)
    info = info + (num2 / den[:, None, None]).sum(axis=0) - z.T @ z
    return loglik, score, info
