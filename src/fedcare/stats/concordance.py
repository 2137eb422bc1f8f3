"""Harrell's C-index of a risk score, per site and pooled across sites, exactly.

A pair (i, j) is comparable when i had the event first: ``T_i < T_j``, or ``T_i == T_j``
with i an event and j censored (two events at the same time are not comparable), as in
lifelines' ``concordance_index``. It is concordant when the higher risk died first
(``r_i > r_j``) and counts one half when the risks tie. C = (concordant + tied / 2) /
comparable. The risk is ``x' coef`` on the plan's covariates (a fitted Cox model), or a
score column the site already holds.

Per site (``per_site``): each site counts the pairs among its own rows and releases three
totals. This is FLamby's metric when averaged over sites.

Pooled across sites, exactly: the pairs that span two sites need each index event's time
and risk at the other site. So (1) every site releases its events' (time, risk) pairs
(``per_site``; this reveals each event's time and one linear combination of its
covariates, so it runs only where ``min_cell`` is 0 or 1, like exact Kaplan-Meier);
(2) every site counts, against *all* released events, its own rows that are comparable,
concordant and tied, and releases just those three totals (``sum``; one patient's row is
compared with every event, its own included, so summing over sites counts every pooled
pair exactly once). A site that withholds step (1) withholds (2) too, so the pooled
C-index is exact over the sites that released. In step (2) a site checks that its own
released events are among those it is asked about, but cannot tell other sites' events
from made-up probes (:meth:`Concordance.permits` checks the rest of the question against
the plan); it answers with three totals only, and limiting repeated probes is the query
job's (the coordinator is assumed honest-but-curious, as for exact Kaplan-Meier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
from fedcare.stats.survival_rows import releases_small_counts, survival_rows

SITE_COUNTS = "cindex.site_counts"
EVENT_RISKS = "cindex.event_risks"
PAIR_COUNTS = "cindex.pair_counts"


def pair_counts(
    index_times: FloatArray,
    index_risks: FloatArray,
    time: FloatArray,
    event: FloatArray,
    risk: FloatArray,
    block: int = 1 << 20,
) -> tuple[float, float, float]:
    """(concordant, tied, comparable) over pairs of an index event (time, risk) and a row
    (``time``, ``event``, ``risk``) that outlived it: ``time > t``, or censored at ``t``.

    Compared as blocks of index events against all rows (at most ``block`` pairs at once).
    """
    concordant = tied = comparable = 0.0
    step = max(1, block // max(len(time), 1))
    censored = event == 0
    for first in range(0, len(index_times), step):
        t = index_times[first : first + step, None]
        r = index_risks[first : first + step, None]
        outlived = (time > t) | ((time == t) & censored)
        comparable += float(outlived.sum())
        concordant += float((outlived & (risk < r)).sum())
        tied += float((outlived & (risk == r)).sum())
    return concordant, tied, comparable


def c_index(concordant: float, tied: float, comparable: float) -> float:
    """Harrell's C from pair counts (NaN without comparable pairs)."""
    return (concordant + 0.5 * tied) / comparable if comparable else float("nan")


def _site_risks(
    params: Mapping[str, Any], table: SiteTable
) -> tuple[FloatArray, FloatArray, FloatArray]:
    if "risk" in params:
        rows = survival_rows(table, [params["risk"]])
        return rows.time, rows.event, rows.x[:, 0]
    rows = survival_rows(table, params["covariates"])
    return rows.time, rows.event, rows.x @ np.asarray(params["coef"], dtype=np.float64)


@site_computation(SITE_COUNTS)
def site_counts(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """The site's own pair counts (its within-site C-index)."""
    time, event, risk = _site_risks(params, table)
    events = int(event.sum())
    if rules.min_cell > 1 and events < rules.min_cell:
        zeros = {"concordant": np.zeros(1), "tied": np.zeros(1), "comparable": np.zeros(1)}
        return Release(zeros, (f"C-index withheld: {events} events < min_cell {rules.min_cell}",))
    died = event == 1
    counts = pair_counts(time[died], risk[died], time, event, risk)
    return Release(
        {
            k: np.array([v])
            for k, v in zip(("concordant", "tied", "comparable"), counts, strict=True)
        }
    )


def _withheld(rules: DisclosureRules) -> str:
    return (
        f"withheld from the pooled C-index: it releases each event's time and risk score, "
        f"which min_cell {rules.min_cell} forbids"
    )


@site_computation(EVENT_RISKS)
def site_event_risks(
    params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules
) -> Release:
    """Pooled step 1: the (time, risk) of each of the site's events."""
    if not releases_small_counts(rules):
        return Release({"times": np.zeros(0), "risks": np.zeros(0)}, (_withheld(rules),))
    time, event, risk = _site_risks(params, table)
    died = event == 1
    return Release({"times": time[died], "risks": risk[died]})


@site_computation(PAIR_COUNTS)
def site_pair_counts(
    params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules
) -> Release:
    """Pooled step 2: the site's rows compared with every released event."""
    if not releases_small_counts(rules):
        zeros = {"concordant": np.zeros(1), "tied": np.zeros(1), "comparable": np.zeros(1)}
        return Release(zeros, (_withheld(rules),))
    time, event, risk = _site_risks(params, table)
    index_times = np.asarray(params["event_times"], dtype=np.float64)
    index_risks = np.asarray(params["event_risks"], dtype=np.float64)
    # The events it released in step 1 must be among those it is asked to compare with.
    asked = set(zip(index_times.tolist(), index_risks.tolist(), strict=True))
    died = event == 1
    if not set(zip(time[died].tolist(), risk[died].tolist(), strict=True)) <= asked:
        raise ValueError(
            f"site {table.site}: the question's events do not include the events this site "
            "released (a made-up or altered list; or the table changed since)"
        )
    counts = pair_counts(index_times, index_risks, time, event, risk)
    return Release(
        {
            k: np.array([v])
            for k, v in zip(("concordant", "tied", "comparable"), counts, strict=True)
        }
    )


@dataclass(frozen=True)
class Concordance(Analysis):
    """C-index of ``x' coef`` over ``covariates`` (or of the ``risk`` column), per site and,
    when ``pooled``, across sites."""

    id: str
    covariates: Sequence[str] = ()
    coef: Sequence[float] = ()
    risk: str | None = None
    pooled: bool = True

    def __post_init__(self) -> None:
        if (self.risk is None) != bool(self.covariates):
            raise ValueError(
                f"analysis '{self.id}': give either 'covariates' with 'coef' or a 'risk' column"
            )
        if len(self.coef) != len(self.covariates):
            raise ValueError(
                f"analysis '{self.id}': {len(self.covariates)} covariates but {len(self.coef)} coefficients"
            )

    def _score(self) -> dict[str, Any]:
        if self.risk is not None:
            return {"risk": self.risk}
        return {"covariates": list(self.covariates), "coef": [float(c) for c in self.coef]}

    def start(self) -> Step:
        return Step(Question(self.id, SITE_COUNTS, self._score(), "per_site"), {"notes": []})

    def permits(self, question: Question) -> bool:
        if question.analysis != self.id:
            return False
        params = dict(question.params)
        if question.step == SITE_COUNTS or (question.step == EVENT_RISKS and self.pooled):
            return params == self._score()
        if question.step == PAIR_COUNTS and self.pooled:
            rest = {k: v for k, v in params.items() if k not in ("event_times", "event_risks")}
            return rest == self._score() and set(params) - set(rest) == {
                "event_times",
                "event_risks",
            }
        return False

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        memo = dict(step.memo)
        memo["notes"] = list(dict.fromkeys([*memo["notes"], *combined.suppressed]))
        name = step.question.step
        if name == SITE_COUNTS:
            memo["per_site"] = {
                site: {k: float(v[0]) for k, v in values.items()}
                for site, values in (combined.per_site or {}).items()
            }
            if not self.pooled:
                return self._result(memo)
            return Step(Question(self.id, EVENT_RISKS, self._score(), "per_site"), memo)
        if name == EVENT_RISKS:
            released = list((combined.per_site or {}).values())
            times = np.concatenate([np.zeros(0), *(v["times"] for v in released)])
            risks = np.concatenate([np.zeros(0), *(v["risks"] for v in released)])
            order = np.lexsort((risks, times))  # a canonical order: no site's rows stand out
            params = {
                **self._score(),
                "event_times": times[order].tolist(),
                "event_risks": risks[order].tolist(),
            }
            return Step(Question(self.id, PAIR_COUNTS, params, "sum"), memo)
        total = combined.total or {}
        memo["pooled"] = {k: float(v[0]) for k, v in total.items()}
        return self._result(memo)

    def _result(self, memo: Mapping[str, Any]) -> AnalysisResult:
        per_site = {
            site: {**counts, "c_index": _c_or_none(counts)}
            for site, counts in memo["per_site"].items()
        }
        usable = [v["c_index"] for v in per_site.values() if v["c_index"] is not None]
        tables: dict[str, Any] = {
            "per_site": per_site,
            "mean_of_sites": float(np.mean(usable)) if usable else None,
        }
        if "pooled" in memo:
            pooled = memo["pooled"]
            tables["pooled"] = {**pooled, "c_index": _c_or_none(pooled)}
        return AnalysisResult(self.id, "concordance", tables, tuple(memo["notes"]))


def _c_or_none(counts: Mapping[str, float]) -> float | None:
    """The C-index of released counts; None (JSON-able) without a comparable pair."""
    if not counts["comparable"]:
        return None
    return c_index(counts["concordant"], counts["tied"], counts["comparable"])
