"""Federated Kaplan-Meier curves (overall and by group) and the log-rank test.

Two modes, chosen in the plan:

- ``exact``: (1) each site releases its distinct event times (``per_site``); the coordinator
  takes their union; (2) each site releases, at every union time, its number at risk and
  its events, overall and per group (``sum``). The summed counts are the pooled counts, so
  the curve, its Greenwood interval and the log-rank statistic equal the pooled estimates.
  Exact event times come with counts of one by nature, so a site runs this mode only when
  its effective ``min_cell`` is 0 or 1 (disclosure control off); a stricter site withholds
  its rows (it releases nothing and says so), and the result is then exact over the sites
  that released.
- ``grid``: one ``sum`` step on a declared time grid: a row's time moves up to the first
  grid point at or above it (a row beyond the last point is censored there), so the result
  is exactly the pooled Kaplan-Meier of those rounded times: no event time leaves a site,
  and the curve is exact only at grid points where the grid is as fine as the data (a
  coarser grid delays each event to its bin's upper edge, which can only raise the curve
  within a bin). With ``min_cell`` > 1 a site merges adjacent bins of its own until every
  count it releases (events and censored per bin, hence also at risk) is 0 or at least
  ``min_cell``; a site whose total events or censored are below it withholds its rows.

Delayed entry (an ``entry`` role, left truncation): in exact mode a patient is at risk at
``t`` only when ``entry < t <= time``, as lifelines' ``entry=``; a grid refuses it.

At-risk tables for the report: in exact mode each site also counts its rows still at risk
at the plan's ``at_risk_times``; on a grid they are read off the grid counts (at the first
grid point at or after each time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
from fedcare.stats.survival_km import (
    FloatArray,
    KaplanMeierCurve,
    kaplan_meier,
    logrank,
    merge_small_cells,
)
from fedcare.stats.survival_rows import SurvivalRows, releases_small_counts, survival_rows

Mode = Literal["exact", "grid"]
EVENT_TIMES = "km.event_times"
COUNTS = "km.counts"


def _slices(params: Mapping[str, Any], table: SiteTable) -> list[SurvivalRows]:
    """The overall rows, then one slice per declared group level (delayed entry is taken
    into account in exact mode only: on a grid an entry time would need rounding too)."""
    exact = params.get("mode", "exact") == "exact"
    overall = survival_rows(table, allow_entry=exact)
    group = params.get("group")
    if group is None:
        return [overall]
    levels = [str(v) for v in params["levels"]]
    grouped = survival_rows(table, group=group, levels=levels, allow_entry=exact)
    picks = [grouped.group == g for g in range(len(levels))]
    # Rows without a group still count in the overall curve: say they only miss the groups.
    notes = tuple(f"curves by {group}: {n}" for n in grouped.notes)
    return [overall] + [
        SurvivalRows(
            grouped.time[p],
            grouped.event[p],
            grouped.x[p],
            grouped.group[p],
            notes,
            None if grouped.entry is None else grouped.entry[p],
        )
        for p in picks
    ]


def _withheld_line(rules: DisclosureRules) -> str:
    return (
        f"exact event times withheld: min_cell {rules.min_cell} forbids releasing counts of "
        "one (exact mode needs min_cell 0 or 1; ask for a time grid instead)"
    )


@site_computation(EVENT_TIMES)
def site_event_times(
    params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules
) -> Release:
    """Exact mode, step 1: the site's distinct event times (none when its rules forbid)."""
    rows = survival_rows(table, allow_entry=True)
    if not releases_small_counts(rules):
        return Release(values={"times": np.zeros(0)}, suppressed=(_withheld_line(rules),))
    return Release(values={"times": np.unique(rows.time[rows.event == 1])}, suppressed=rows.notes)


@site_computation(COUNTS)
def site_counts(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """At risk and events at the question's times, overall (row 0) and per group (rows 1..)."""
    times = np.asarray(params["times"], dtype=np.float64)
    slices = _slices(params, table)
    k = len(times)
    at_risk = np.zeros((len(slices), k))
    events = np.zeros((len(slices), k))
    rows_of = np.zeros(len(slices))  # per slice: so a level nobody has is not drawn as a curve
    notes: list[str] = list(dict.fromkeys(n for s in slices for n in s.notes))
    names = ["overall", *(f"{params['group']}={v}" for v in params.get("levels", []))]
    if params["mode"] == "exact":
        report_times = np.asarray(params["at_risk_times"], dtype=np.float64)
        at_risk_at = np.zeros((len(slices), len(report_times)))
        if not releases_small_counts(rules):
            notes.append(_withheld_line(rules))
        else:
            for g, rows in enumerate(slices):
                dead = rows.time[rows.event == 1]
                missing = np.setdiff1d(dead, times)
                if missing.size:
                    raise ValueError(
                        f"site {table.site}: event time {missing[0]!r} is not among the "
                        "question's times (the table changed since the site released them?)"
                    )
                rows_of[g] = len(rows.time)
                at_risk[g] = _at_risk(rows, times)
                events[g] = np.bincount(np.searchsorted(times, dead), minlength=k)[:k]
                at_risk_at[g] = _at_risk(rows, report_times)
        values = {"rows": rows_of, "at_risk": at_risk, "events": events, "at_risk_at": at_risk_at}
    else:
        for g, rows in enumerate(slices):
            bins = np.searchsorted(times, rows.time, "left")
            event = rows.event.copy()
            beyond = bins >= k
            if beyond.any():
                notes.append(
                    f"{names[g]}: {int(beyond.sum())} rows after the grid's last time "
                    f"{times[-1]:g} censored there"
                )
                event[beyond] = 0.0
                bins[beyond] = k - 1
            if rules.min_cell > 1:
                merged, ok = merge_small_cells(bins, event, k, rules.min_cell)
                if not ok:
                    notes.append(
                        f"{names[g]}: withheld: its {int(event.sum())} events and "
                        f"{int(len(event) - event.sum())} censored cannot all be released in "
                        f"cells of at least {rules.min_cell}"
                    )
                    continue
                if not np.array_equal(merged, bins):
                    moved = int((merged != bins).sum())
                    notes.append(
                        f"{names[g]}: {moved} rows moved to a later grid time (adjacent bins "
                        f"merged so every released count is 0 or >= {rules.min_cell})"
                    )
                bins = merged
            rows_of[g] = len(bins)  # = at risk at the first grid point: nothing new
            at_risk[g] = len(bins) - np.searchsorted(np.sort(bins), np.arange(k), "left")
            events[g] = np.bincount(bins, weights=event, minlength=k)
        values = {"rows": rows_of, "at_risk": at_risk, "events": events}
    # One patient sits in the overall slice and at most one group slice: it changes each
    # at-risk count once per slice and one event count per slice.
    width = 2.0 if len(slices) > 1 else 1.0
    sensitivity = {
        "rows": (width, float(np.sqrt(width))),
        "at_risk": (width * k, float(np.sqrt(width * k))),
        "events": (width, float(np.sqrt(width))),
    }
    if "at_risk_at" in values:
        m = values["at_risk_at"].shape[1]
        sensitivity["at_risk_at"] = (width * m, float(np.sqrt(width * m)))
    return Release(values=values, suppressed=tuple(notes), sensitivity=sensitivity)


def _at_risk(rows: SurvivalRows, times: FloatArray) -> FloatArray:
    """Rows at risk at each time ``t``: ``t <= time``, and ``entry < t`` with delayed entry."""
    at_risk: FloatArray = (
        len(rows.time) - np.searchsorted(np.sort(rows.time), times, "left")
    ).astype(np.float64)
    if rows.entry is not None:  # not yet entered: entry >= t
        at_risk -= len(rows.entry) - np.searchsorted(np.sort(rows.entry), times, "left")
    return at_risk


@dataclass(frozen=True)
class KaplanMeier(Analysis):
    """Kaplan-Meier curves overall and by ``group`` (declared ``levels``), with the log-rank
    test across the levels; ``mode`` and, on a grid, the ``grid`` times come from the plan."""

    id: str
    mode: Mode = "exact"
    grid: Sequence[float] = ()
    group: str | None = None
    levels: Sequence[str] = ()
    alpha: float = 0.05
    at_risk_times: Sequence[float] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "grid"):
            raise ValueError(
                f"analysis '{self.id}': mode must be 'exact' or 'grid', found {self.mode!r}"
            )
        grid = np.asarray(self.grid, dtype=np.float64)
        if self.mode == "grid" and (grid.size == 0 or np.any(np.diff(grid) <= 0) or grid[0] < 0):
            raise ValueError(
                f"analysis '{self.id}': grid mode needs 'grid', increasing times >= 0; found {list(self.grid)}"
            )
        if self.mode == "exact" and grid.size:
            raise ValueError(f"analysis '{self.id}': 'grid' is given but the mode is 'exact'")
        if (self.group is None) != (len(self.levels) == 0):
            raise ValueError(
                f"analysis '{self.id}': a grouping needs both 'group' and its 'levels' "
                f"(found group={self.group!r}, levels={list(self.levels)})"
            )
        if len(set(map(str, self.levels))) != len(self.levels):
            raise ValueError(f"analysis '{self.id}': repeated levels in {list(self.levels)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"analysis '{self.id}': alpha must be in (0, 1), found {self.alpha}")
        report = np.asarray(self.at_risk_times, dtype=np.float64)
        if report.size and (np.any(np.diff(report) <= 0) or report[0] < 0):
            raise ValueError(
                f"analysis '{self.id}': at_risk_times must be increasing times >= 0; "
                f"found {list(self.at_risk_times)}"
            )

    def _grouping(self) -> dict[str, Any]:
        if self.group is None:
            return {}
        return {"group": self.group, "levels": [str(v) for v in self.levels]}

    def _counts(self, times: Sequence[float]) -> Question:
        params: dict[str, Any] = {"mode": self.mode, "times": [float(t) for t in times]}
        if self.mode == "exact":
            params["at_risk_times"] = [float(t) for t in self._report_times(times)]
        return Question(self.id, COUNTS, {**params, **self._grouping()}, "sum")

    def _report_times(self, times: Sequence[float]) -> Sequence[float]:
        if self.at_risk_times:
            return self.at_risk_times
        end = float(times[-1]) if len(times) else 0.0
        return [float(t) for t in np.linspace(0.0, end, 6)]

    def start(self) -> Step:
        if self.mode == "grid":
            return Step(self._counts(self.grid), {"notes": []})
        return Step(Question(self.id, EVENT_TIMES, {}, "per_site"), {"notes": []})

    def permits(self, question: Question) -> bool:
        if question.analysis != self.id:
            return False
        if question.step == EVENT_TIMES:
            return self.mode == "exact" and dict(question.params) == {}
        if question.step != COUNTS:
            return False
        times = question.params.get("times")
        if not isinstance(times, list):
            return False
        return dict(question.params) == dict(self._counts(times).params)

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        notes = [*step.memo["notes"], *combined.suppressed]
        if step.question.step == EVENT_TIMES:
            per_site = combined.per_site or {}
            union = np.unique(
                np.concatenate([np.zeros(0), *(v["times"] for v in per_site.values())])
            )
            if union.size == 0:
                raise ValueError(
                    f"analysis '{self.id}': no site released an event time"
                    + (f" ({'; '.join(notes)})" if notes else "")
                )
            return Step(self._counts(union.tolist()), {"notes": notes})
        total = combined.total or {}
        times = np.asarray(step.question.params["times"], dtype=np.float64)
        return self._result(times, total, list(dict.fromkeys(notes)), step.question.params)

    def _result(
        self,
        times: FloatArray,
        total: Mapping[str, FloatArray],
        notes: list[str],
        params: Mapping[str, Any],
    ) -> AnalysisResult:
        names = ["overall", *(str(v) for v in self.levels)]
        if total["rows"][0] == 0:
            raise ValueError(
                f"analysis '{self.id}': no site released any rows"
                + (f" ({'; '.join(notes)})" if notes else "")
            )
        shown = [g for g in range(len(names)) if total["rows"][g] > 0]
        notes.extend(
            f"{self.group}={names[g]}: no released rows, so no curve"
            for g in range(1, len(names))
            if g not in shown
        )
        curves = {
            names[g]: kaplan_meier(times, total["at_risk"][g], total["events"][g], self.alpha)
            for g in shown
        }
        if self.mode == "exact":
            report_times = np.asarray(params["at_risk_times"], dtype=np.float64)
            at_risk_at = total["at_risk_at"]
        else:
            notes.append(
                "times binned up to the grid's points: the curves are the pooled Kaplan-Meier "
                "of the binned times, exact at the grid points only as far as the grid resolves the data"
            )
            report_times = np.asarray(self.at_risk_times or times, dtype=np.float64)
            index = np.searchsorted(times, report_times, "left")
            padded = np.concatenate([total["at_risk"], np.zeros((len(names), 1))], axis=1)
            at_risk_at = padded[:, np.minimum(index, len(times))]
        tables: dict[str, Any] = {
            "mode": self.mode,
            "alpha": self.alpha,
            "curves": {name: _curve_table(c) for name, c in curves.items()},
            "median": {name: _finite_or_none(c.median()) for name, c in curves.items()},
            "at_risk_table": {
                "times": report_times.tolist(),
                **{names[g]: at_risk_at[g].tolist() for g in shown},
            },
        }
        compared = [g for g in shown if g > 0]
        if self.group is not None and len(compared) >= 2:
            test = logrank(total["at_risk"][compared], total["events"][compared])
            levels = [names[g] for g in compared]
            tables["logrank"] = {
                "group": self.group,
                "statistic": test.statistic,
                "df": test.df,
                "p_value": test.p_value,
                "observed": dict(zip(levels, test.observed.tolist(), strict=True)),
                "expected": dict(zip(levels, test.expected.tolist(), strict=True)),
            }
        elif self.group is not None:
            notes.append(f"no log-rank test: fewer than two levels of {self.group} have rows")
        return AnalysisResult(self.id, "kaplan_meier", tables, tuple(notes))


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _curve_table(curve: KaplanMeierCurve) -> dict[str, list[float]]:
    return {
        "times": curve.times.tolist(),
        "at_risk": curve.at_risk.tolist(),
        "events": curve.events.tolist(),
        "survival": curve.survival.tolist(),
        "lower": curve.lower.tolist(),
        "upper": curve.upper.tolist(),
    }


def curves(result: AnalysisResult) -> dict[str, KaplanMeierCurve]:
    """The curves of a Kaplan-Meier result as step functions (overall and per level)."""
    alpha = float(result.tables["alpha"])
    return {
        name: kaplan_meier(
            np.asarray(t["times"]), np.asarray(t["at_risk"]), np.asarray(t["events"]), alpha
        )
        for name, t in result.tables["curves"].items()
    }
