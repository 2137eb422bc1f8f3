"""Cox proportional hazards, fitted exactly across sites by distributed Newton-Raphson.

In the spirit of WebDISCO (Lu et al. 2015): no row leaves a site, yet the fit equals the
pooled one (lifelines ``CoxPHFitter``, Efron ties), because everything Newton needs is a sum
over rows. The conversation:

1. ``cox.moments`` (sum): row counts and sums of each covariate and its square, for the
   pooled mean and standard deviation; covariates are standardised with them, as lifelines
   does, and results are reported on the original scale (so an L2 ``penalizer`` means the
   same as lifelines').
2. Unless the strata are the sites, ``cox.event_times`` (per site): each site's distinct
   (stratum, event time) pairs; their union are the keys of the risk sets.
3. Each Newton iteration, one ``sum`` question with ``beta``:

   - pooled risk sets (no strata, or strata by a declared column): each site releases, at
     every key, its risk-set sums ``S0, S1, S2``, its tied-event sums ``D0, D1, D2`` and
     event count, and the covariates summed over its events; the coordinator sums them and
     computes the Efron log-likelihood, score and information (:mod:`cox_efron`);
   - strata = site (a baseline hazard per hospital): no risk set spans two sites, so each
     site releases its own log-likelihood, score vector and information matrix.

   Newton steps are halved while the log-likelihood falls; the fit stops when the Newton
   step is below ``tolerance`` (on the standardised scale).

Delayed entry (an ``entry`` role): a patient joins the risk sets of event times after
entry only, as lifelines' ``entry_col``.

What leaves a site: the pooled-risk-set modes reveal its event times and, per event time,
sums of ``exp(x'b) x`` over its risk set; the risk set of the last few event times can be
small, so these modes run only where the site's effective ``min_cell`` is 0 or 1 (the
through-the-secure-sum deployment is the one to prefer); a stricter site withholds its rows
and the fit is exact over the sites that released. The site-stratified mode releases only
sums over all of a site's events (no times), so it runs under ``min_cell`` too, for sites
with at least ``min_cell`` events. A site cannot check the coordinator's keys beyond its own
event times (:meth:`CoxPH.permits` checks everything else against the plan): keys placed
between two patients' times would difference out one row, so these modes assume an
honest-but-curious coordinator, as the exact Kaplan-Meier does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from fedcare.stats.cox_efron import RiskSetSums, efron_from_sums, risk_set_sums
from fedcare.stats.protocol import (
    Analysis,
    AnalysisResult,
    Combined,
    DisclosureRules,
    Question,
    Release,
    SiteTable,
    Step,
    site_computation,
)
from fedcare.stats.survival_km import FloatArray
from fedcare.stats.survival_rows import SurvivalRows, releases_small_counts, survival_rows

MOMENTS = "cox.moments"
EVENT_TIMES = "cox.event_times"
RISK_SETS = "cox.risk_sets"
SITE_EFRON = "cox.site_efron"
SITE = "site"
"""The ``strata`` value meaning one baseline hazard per site."""


def _rows(params: Mapping[str, Any], table: SiteTable) -> SurvivalRows:
    strata = params.get("strata")
    if strata is None or strata == SITE:
        return survival_rows(table, params["covariates"], allow_entry=True)
    return survival_rows(table, params["covariates"], strata, params["levels"], allow_entry=True)


def _withheld(params: Mapping[str, Any], rows: SurvivalRows, rules: DisclosureRules) -> str | None:
    """Why this site sits the fit out (the same answer at every step, so it is left out of
    every sum consistently), or None."""
    if params.get("strata") == SITE:
        events = int(rows.event.sum())
        if rules.min_cell > 1 and events < rules.min_cell:
            return f"withheld from the Cox fit: {events} events < min_cell {rules.min_cell}"
        return None
    if not releases_small_counts(rules):
        return (
            f"withheld from the Cox fit: pooled risk sets release event times and small "
            f"risk-set sums, which min_cell {rules.min_cell} forbids (strata: site needs no "
            "event times)"
        )
    return None


def _standardised(params: Mapping[str, Any], rows: SurvivalRows) -> FloatArray:
    mean = np.asarray(params["mean"], dtype=np.float64)
    std = np.asarray(params["std"], dtype=np.float64)
    standardised: FloatArray = (rows.x - mean) / std
    return standardised


@site_computation(MOMENTS)
def site_moments(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Row count, covariate sums and sums of squares (for the pooled standardisation)."""
    rows = _rows(params, table)
    p = rows.x.shape[1]
    why = _withheld(params, rows, rules)
    if why is not None:
        zeros = {"n": np.zeros(1), "events": np.zeros(1), "sum": np.zeros(p), "sum_sq": np.zeros(p)}
        return Release(values=zeros, suppressed=(*rows.notes, why))
    values = {
        "n": np.array([float(len(rows.time))]),
        "events": np.array([rows.event.sum()]),
        "sum": rows.x.sum(axis=0),
        "sum_sq": (rows.x**2).sum(axis=0),
    }
    return Release(values=values, suppressed=rows.notes)


@site_computation(EVENT_TIMES)
def site_event_keys(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """The site's distinct (stratum, event time) pairs."""
    rows = _rows(params, table)
    why = _withheld(params, rows, rules)
    if why is not None:
        return Release({"strata": np.zeros(0), "times": np.zeros(0)}, (*rows.notes, why))
    died = rows.event == 1
    keys = np.unique(np.stack([rows.group[died], rows.time[died]], axis=1), axis=0)
    keys = keys.reshape(-1, 2)
    return Release({"strata": keys[:, 0], "times": keys[:, 1]}, rows.notes)


@site_computation(RISK_SETS)
def site_risk_sets(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Risk-set and tied-event sums at every key, at the question's ``beta``."""
    rows = _rows(params, table)
    p = rows.x.shape[1]
    key_strata = np.asarray(params["key_strata"], dtype=np.int64)
    key_times = np.asarray(params["key_times"], dtype=np.float64)
    beta = np.asarray(params["beta"], dtype=np.float64)
    why = _withheld(params, rows, rules)
    if why is not None:
        empty = np.zeros((0, p))
        sums = risk_set_sums(
            np.zeros(0), np.zeros(0), empty, np.zeros(0, np.int64), beta, key_strata, key_times
        )
        return Release(values=_sums_values(sums), suppressed=(*rows.notes, why))
    try:
        sums = risk_set_sums(
            rows.time,
            rows.event,
            _standardised(params, rows),
            rows.group,
            beta,
            key_strata,
            key_times,
            rows.entry,
        )
    except ValueError as error:
        raise ValueError(
            f"site {table.site}: {error} (the table changed since the site released its event times?)"
        ) from None
    return Release(values=_sums_values(sums), suppressed=rows.notes)


@site_computation(SITE_EFRON)
def site_efron(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """The site's own Efron log-likelihood, score and information (strata = site)."""
    rows = _rows(params, table)
    p = rows.x.shape[1]
    beta = np.asarray(params["beta"], dtype=np.float64)
    why = _withheld(params, rows, rules)
    if why is not None:
        zeros = {"loglik": np.zeros(1), "score": np.zeros(p), "info": np.zeros((p, p))}
        return Release(values=zeros, suppressed=(*rows.notes, why))
    died = rows.event == 1
    times = np.unique(rows.time[died])
    sums = risk_set_sums(
        rows.time,
        rows.event,
        _standardised(params, rows),
        np.zeros(len(rows.time), np.int64),
        beta,
        np.zeros(len(times), np.int64),
        times,
        rows.entry,
    )
    loglik, score, info = efron_from_sums(sums, beta)
    return Release({"loglik": np.array([loglik]), "score": score, "info": info}, rows.notes)


def _sums_values(sums: RiskSetSums) -> dict[str, FloatArray]:
    return {name: np.asarray(getattr(sums, name)) for name in RiskSetSums.__dataclass_fields__}


@dataclass(frozen=True)
class CoxPH(Analysis):
    """A Cox model on ``covariates`` (numeric columns), Efron ties.

    ``strata``: None (one baseline hazard), ``"site"`` (one per site), or a column whose
    ``levels`` the plan declares; ``penalizer``: lifelines' L2 penalty (``l1_ratio`` 0) on
    the standardised scale; ``alpha``: for the confidence intervals.
    """

    id: str
    covariates: Sequence[str]
    strata: str | None = None
    levels: Sequence[str] = ()
    penalizer: float = 0.0
    alpha: float = 0.05
    tolerance: float = 1e-9
    max_iterations: int = 25

    def __post_init__(self) -> None:
        if not self.covariates:
            raise ValueError(f"analysis '{self.id}': a Cox model needs at least one covariate")
        if len(set(self.covariates)) != len(self.covariates):
            raise ValueError(
                f"analysis '{self.id}': repeated covariates in {list(self.covariates)}"
            )
        by_column = self.strata not in (None, SITE)
        if by_column != bool(self.levels):
            raise ValueError(
                f"analysis '{self.id}': strata by a column need the column's 'levels' (and only "
                f"then); found strata={self.strata!r}, levels={list(self.levels)}"
            )
        if self.penalizer < 0:
            raise ValueError(
                f"analysis '{self.id}': penalizer must be >= 0, found {self.penalizer}"
            )
        if not 0 < self.alpha < 1:
            raise ValueError(f"analysis '{self.id}': alpha must be in (0, 1), found {self.alpha}")

    # The questions ------------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        base: dict[str, Any] = {"covariates": list(self.covariates), "strata": self.strata}
        if self.levels:
            base["levels"] = [str(v) for v in self.levels]
        return base

    def _newton(self, memo: Mapping[str, Any], beta: Sequence[float]) -> Question:
        params = {**self._base(), "mean": memo["mean"], "std": memo["std"], "beta": list(beta)}
        if self.strata == SITE:
            return Question(self.id, SITE_EFRON, params, "sum")
        keys = {"key_strata": memo["key_strata"], "key_times": memo["key_times"]}
        return Question(self.id, RISK_SETS, {**params, **keys}, "sum")

    def start(self) -> Step:
        return Step(Question(self.id, MOMENTS, self._base(), "sum"), {"notes": []})

    def permits(self, question: Question) -> bool:
        if question.analysis != self.id:
            return False
        params = dict(question.params)
        if question.step in (MOMENTS, EVENT_TIMES):
            return params == self._base() and (question.step == MOMENTS or self.strata != SITE)
        step = RISK_SETS if self.strata != SITE else SITE_EFRON
        extra = {"mean", "std", "beta"} | (
            {"key_strata", "key_times"} if step == RISK_SETS else set()
        )
        return (
            question.step == step
            and set(params) == set(self._base()) | extra
            and {k: params[k] for k in self._base()} == self._base()
        )

    # The conversation -----------------------------------------------------------------------

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        memo = dict(step.memo)
        memo["notes"] = list(dict.fromkeys([*memo["notes"], *combined.suppressed]))
        name = step.question.step
        if name == MOMENTS:
            return self._after_moments(memo, combined.total or {})
        if name == EVENT_TIMES:
            keys = np.unique(
                np.concatenate(
                    [np.zeros((0, 2))]
                    + [
                        np.stack([v["strata"], v["times"]], axis=1)
                        for v in (combined.per_site or {}).values()
                    ]
                ),
                axis=0,
            )
            if len(keys) == 0:
                raise ValueError(
                    f"analysis '{self.id}': no site released an event time; {'; '.join(memo['notes'])}"
                )
            memo["key_strata"] = keys[:, 0].astype(int).tolist()
            memo["key_times"] = keys[:, 1].tolist()
            return self._ask(memo, [0.0] * len(self.covariates))
        return self._after_newton(step, memo, combined.total or {})

    def _after_moments(self, memo: dict[str, Any], total: Mapping[str, FloatArray]) -> Step:
        n = float(total["n"][0])
        if n < 2 or total["events"][0] == 0:
            raise ValueError(
                f"analysis '{self.id}': the sites released {n:g} rows and "
                f"{float(total['events'][0]):g} events; a Cox fit needs rows with events"
                + (f" ({'; '.join(memo['notes'])})" if memo["notes"] else "")
            )
        mean = total["sum"] / n
        std = np.sqrt(np.maximum(total["sum_sq"] - n * mean**2, 0.0) / (n - 1))
        flat = [
            c
            for c, s, m in zip(self.covariates, std, mean, strict=True)
            if not s > 1e-7 * max(1.0, abs(m))  # one value, up to rounding in sum_sq
        ]
        if flat:
            raise ValueError(
                f"analysis '{self.id}': covariate(s) {', '.join(flat)} take a single value over "
                "all released rows; a Cox model cannot estimate their effect"
            )
        memo.update(n=n, events=float(total["events"][0]), mean=mean.tolist(), std=std.tolist())
        if self.strata == SITE:
            return self._ask(memo, [0.0] * len(self.covariates))
        return Step(Question(self.id, EVENT_TIMES, self._base(), "per_site"), memo)

    def _ask(self, memo: dict[str, Any], beta: Sequence[float]) -> Step:
        memo["beta"] = list(beta)
        return Step(self._newton(memo, beta), memo)

    def _penalised(
        self, n: float, beta: FloatArray, loglik: float, score: FloatArray, info: FloatArray
    ) -> tuple[float, FloatArray, FloatArray]:
        # lifelines: penalty n * penalizer * |beta|^2 / 2 on the standardised scale.
        scale = n * self.penalizer
        return (
            loglik - 0.5 * scale * float(beta @ beta),
            score - scale * beta,
            info + scale * np.eye(len(beta)),
        )

    def _after_newton(
        self, step: Step, memo: dict[str, Any], total: Mapping[str, FloatArray]
    ) -> Step | AnalysisResult:
        beta = np.asarray(memo["beta"], dtype=np.float64)
        if self.strata == SITE:
            loglik, score, info = float(total["loglik"][0]), total["score"], total["info"]
        else:
            sums = RiskSetSums(**{k: np.asarray(v) for k, v in total.items()})
            loglik, score, info = efron_from_sums(sums, beta)
        loglik, score, info = self._penalised(memo["n"], beta, loglik, score, info)
        evaluations = int(memo.get("evaluations", 0)) + 1
        memo["evaluations"] = evaluations
        memo.setdefault("null_loglik", loglik)
        previous = memo.get("accepted")
        if previous is not None and not loglik >= previous["loglik"]:
            # The full Newton step overshot: halve it (back towards the last accepted beta).
            if evaluations >= self.max_iterations:
                return self._result(memo, previous, converged=False)
            halfway = (np.asarray(previous["beta"]) + beta) / 2
            return self._ask(memo, halfway.tolist())
        self._check_identifiable(info, memo["notes"])
        delta = np.linalg.solve(info, score)
        accepted = {"beta": beta.tolist(), "loglik": loglik, "info": info.tolist()}
        memo["accepted"] = accepted
        converged = bool(np.linalg.norm(delta) < self.tolerance)
        if converged or evaluations >= self.max_iterations:
            return self._result(memo, accepted, converged)
        return self._ask(memo, (beta + delta).tolist())

    def _check_identifiable(self, info: FloatArray, notes: Sequence[str]) -> None:
        """A (nearly) singular information matrix means some covariates are collinear over the
        released rows (e.g. one-hot columns that always sum to one), or that a combination of
        them separates the events so the fit runs off to infinity: name them."""
        try:
            pivots = np.diag(np.linalg.cholesky(info)) ** 2
            if pivots.min() > 1e-10 * max(float(np.diag(info).max()), 1.0):
                return
        except np.linalg.LinAlgError:
            pass  # not positive definite: named below
        values, vectors = np.linalg.eigh(info)
        if values[0] > 1e-10 * max(values[-1], 1.0):
            return
        weights = np.abs(vectors[:, 0])
        involved = [c for c, w in zip(self.covariates, weights, strict=True) if w > 0.1]
        raise ValueError(
            f"analysis '{self.id}': the effects of {', '.join(involved)} cannot be told apart "
            "over the released rows (collinear, or nearly: a combination of them that few "
            "patients vary on); drop one of them or set a penalizer"
            + (f" ({'; '.join(notes)})" if notes else "")
        )

    def _result(
        self, memo: Mapping[str, Any], point: Mapping[str, Any], converged: bool
    ) -> AnalysisResult:
        std = np.asarray(memo["std"])
        beta = np.asarray(point["beta"])
        covariance = np.linalg.inv(np.asarray(point["info"])) / np.outer(std, std)
        coef = beta / std
        se = np.sqrt(np.diag(covariance))
        z = float(stats.norm.ppf(1 - self.alpha / 2))
        wald = coef / se
        ll, ll0 = float(point["loglik"]), float(memo["null_loglik"])
        p = len(coef)
        notes = list(memo["notes"])
        if not converged:
            notes.append(
                f"Newton-Raphson did not converge in {memo['evaluations']} evaluations "
                "(separation or collinearity?): estimates are not the maximum"
            )
        tables = {
            "covariates": list(self.covariates),
            "strata": self.strata,
            "coef": coef.tolist(),
            "se": se.tolist(),
            "hazard_ratio": np.exp(coef).tolist(),
            "coef_lower": (coef - z * se).tolist(),
            "coef_upper": (coef + z * se).tolist(),
            "hr_lower": np.exp(coef - z * se).tolist(),
            "hr_upper": np.exp(coef + z * se).tolist(),
            "z": wald.tolist(),
            "p_value": (2 * stats.norm.sf(np.abs(wald))).tolist(),
            "covariance": covariance.tolist(),
            "log_likelihood": ll,
            "null_log_likelihood": ll0,
            "likelihood_ratio": {
                "statistic": 2 * (ll - ll0),
                "df": p,
                "p_value": float(stats.chi2.sf(2 * (ll - ll0), p)),
            },
            "n": memo["n"],
            "events": memo["events"],
            "iterations": memo["evaluations"],
            "converged": converged,
            "alpha": self.alpha,
            "penalizer": self.penalizer,
        }
        return AnalysisResult(self.id, "cox", tables, tuple(notes))
