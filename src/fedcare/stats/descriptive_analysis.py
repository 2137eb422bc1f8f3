"""Descriptive analyses at the coordinator: the questions to ask and how totals become numbers.

Each class is an :class:`~fedcare.stats.protocol.Analysis` over the site computations of
:mod:`fedcare.stats.descriptive`. Pooled numbers equal pandas on the pooled rows (sample
variance with ddof=1), except where a site withheld a small cell: the numbers then cover
the released rows and the result's notes say so. ``by_site=True`` asks ``per_site``
questions, so each site's numbers are reported too (never through a secure sum); the
pooled numbers are then the sums of the per-site answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.stats import descriptive as site
from fedcare.stats.disclosure import SUPPRESSED_SUFFIX
from fedcare.stats.protocol import (
    Analysis,
    AnalysisResult,
    Combine,
    Combined,
    DisclosureRules,
    Question,
    Step,
    Values,
)


def _f(x: float) -> float | None:
    """A JSON number, None for NaN/inf (a withheld or undefined statistic)."""
    return float(x) if math.isfinite(x) else None


def totals(combined: Combined) -> Values:
    """The element-wise total: the sum itself, or the sum of the per-site answers."""
    if combined.total is not None:
        return combined.total
    out: Values = {}
    for values in (combined.per_site or {}).values():
        for key, value in values.items():
            out[key] = out[key] + value if key in out else np.array(value, dtype=np.float64)
    return out


def withheld_note(flags: npt.NDArray[np.float64], labels: Sequence[str], what: str) -> list[str]:
    """Notes for entries some sites withheld (the flags' totals count those sites)."""
    return [
        f"{what} ({labels[int(i)]}): {round(float(flags[i]))} site(s) withheld their rows "
        f"(small cell); the pooled number covers the released rows only"
        for i in np.flatnonzero(np.asarray(flags).ravel() > 0)
    ]


def _permits(question: Question, id_: str, expected: Mapping[str, Mapping[str, Any]]) -> bool:
    """The question is one of ``expected`` steps with those params (plus data-driven keys)."""
    if question.analysis != id_ or question.step not in expected:
        return False
    base = expected[question.step]
    data_keys = {"means", "edges"}
    if set(question.params) - set(base) - data_keys:
        return False
    return all(question.params.get(k) == v for k, v in base.items())


def _check_unique(id_: str, what: str, names: Sequence[str]) -> None:
    seen = [str(n) for n in names]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise ConfigError(f"analysis '{id_}': {what} repeat {repeated}")


def _check_grouping(id_: str, by: str | None, levels: Sequence[str]) -> None:
    """A grouping variable comes with its declared levels (they fix every array's shape)."""
    if by is None and levels:
        raise ConfigError(f"analysis '{id_}': levels {list(levels)} given without 'by'")
    if by is not None and not levels:
        raise ConfigError(f"analysis '{id_}': grouping by '{by}' needs its declared levels")
    _check_unique(id_, f"levels of '{by}'", levels)


class Describe(Analysis):
    """Count, missing, mean, SD (and min/max where every site releases extremes).

    Two sum questions (n and sums, then squares about the pooled means) and, with
    ``extremes``, a per-site one.
    """

    def __init__(
        self,
        id: str,
        variables: Sequence[str],
        *,
        by: str | None = None,
        levels: Sequence[str] = (),
        by_site: bool = False,
        extremes: bool = False,
        bounds: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        if not variables:
            raise ConfigError(f"analysis '{id}': describe needs at least one variable")
        _check_grouping(id, by, levels)
        _check_unique(id, "variables", variables)
        stray = sorted(set(bounds or {}) - set(variables))
        if stray:
            raise ConfigError(
                f"analysis '{id}': bounds given for {stray}, which are not among its "
                f"variables {list(variables)}"
            )
        self.id = id
        self.variables = list(variables)
        self.base: dict[str, Any] = {"variables": self.variables, "by": by, "levels": [*levels]}
        if bounds:
            self.base["bounds"] = {k: [float(b) for b in v] for k, v in bounds.items()}
        self.combine: Combine = "per_site" if by_site else "sum"
        self.extremes = extremes
        self.labels = site.group_labels(self.base)

    def _question(self, step: str, combine: Combine, **extra: Any) -> Question:
        return Question(self.id, step, {**self.base, **extra}, combine)

    def start(self) -> Step:
        return Step(self._question("describe.sums", self.combine), {"stage": "sums"})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        stage = step.memo["stage"]
        if stage == "sums":
            t = totals(combined)
            means = {
                v: list(map(_f, t[f"{v}:sum"] / np.where(t[f"{v}:n"] > 0, t[f"{v}:n"], np.nan)))
                for v in self.variables
            }
            memo = {
                "stage": "centred",
                "means": means,
                "sums": _jsonable(combined),
                "notes": list(combined.suppressed),
            }
            return Step(self._question("describe.centred", self.combine, means=means), memo)
        if stage == "centred":
            memo = {**step.memo, "stage": "extremes", "centred": _jsonable(combined)}
            memo["notes"] = [*step.memo["notes"], *combined.suppressed]
            if self.extremes:
                return Step(self._question("describe.extremes", "per_site"), memo)
            return self._result(memo, None)
        return self._result(dict(step.memo), combined)

    def permits(self, question: Question) -> bool:
        steps = {"describe.sums": self.base, "describe.centred": self.base}
        if self.extremes:
            steps["describe.extremes"] = self.base
        return _permits(question, self.id, steps)

    def _result(self, memo: Mapping[str, Any], extremes: Combined | None) -> AnalysisResult:
        sums, centred = _restore(memo["sums"]), _restore(memo["centred"])
        notes = list(memo["notes"])
        pooled_sums, pooled_ss = totals(sums), totals(centred)
        pooled: dict[str, Any] = {}
        for v in self.variables:
            pooled[v] = _moments(pooled_sums, pooled_ss, v, self.labels)
            notes += withheld_note(
                pooled_sums[f"{v}:n{SUPPRESSED_SUFFIX}"], self.labels, f"'{v}' n"
            )
        tables: dict[str, Any] = {"variables": pooled, "groups": self.labels}
        if sums.per_site is not None and centred.per_site is not None:
            tables["by_site"] = {
                name: {
                    v: _site_moments(values, centred.per_site[name], pooled[v], v, self.labels)
                    for v in self.variables
                }
                for name, values in sums.per_site.items()
            }
        if extremes is not None:
            notes += list(extremes.suppressed)
            _add_extremes(pooled, extremes, self.variables, self.labels, notes)
        return AnalysisResult(self.id, "describe", tables, tuple(notes))


def _moments(sums: Values, ss: Values, v: str, labels: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g, label in enumerate(labels):
        n = float(sums[f"{v}:n"][g])
        mean = sums[f"{v}:sum"][g] / n if n > 0 else math.nan
        var = ss[f"{v}:ss"][g] / (n - 1) if n > 1 else math.nan
        out[label] = {
            "n": round(n),  # a noised count is reported to the nearest integer
            "missing": round(float(sums[f"{v}:missing"][g])),
            "mean": _f(mean),
            "variance": _f(var),
            "sd": _f(math.sqrt(var)) if math.isfinite(var) else None,
        }
    return out


def _site_moments(
    sums: Values, ss_about_pooled: Values, pooled: Mapping[str, Any], v: str, labels: Sequence[str]
) -> dict[str, Any]:
    """A site's own moments; its squares were taken about the pooled mean m, so
    sum (x - m_s)^2 = sum (x - m)^2 - n_s (m_s - m)^2."""
    own = dict(ss_about_pooled)
    ss = np.array(own[f"{v}:ss"], dtype=np.float64)
    for g, label in enumerate(labels):
        n = sums[f"{v}:n"][g]
        m = pooled[label]["mean"]
        if n > 0 and m is not None:
            ss[g] -= n * (sums[f"{v}:sum"][g] / n - m) ** 2
    own[f"{v}:ss"] = np.maximum(ss, 0.0)
    return _moments(sums, own, v, labels)


def _add_extremes(
    pooled: dict[str, Any],
    extremes: Combined,
    variables: Sequence[str],
    labels: Sequence[str],
    notes: list[str],
) -> None:
    per_site = extremes.per_site or {}
    silent = sorted(s for s, values in per_site.items() if not values)
    released = [vals for vals in per_site.values() if vals]
    for v in variables:
        for g, label in enumerate(labels):
            lows = np.array([vals[f"{v}:min"][g] for vals in released])
            highs = np.array([vals[f"{v}:max"][g] for vals in released])
            withheld = any(vals[f"{v}:withheld"][g] > 0 for vals in released)
            known = not silent and not withheld and np.isfinite(lows).any()
            pooled[v][label]["min"] = _f(np.nanmin(lows)) if known else None
            pooled[v][label]["max"] = _f(np.nanmax(highs)) if known else None
    if silent:
        notes.append(f"min/max not reported: site(s) {', '.join(silent)} do not release extremes")


def _jsonable(combined: Combined) -> dict[str, Any]:
    def arrays(values: Mapping[str, npt.NDArray[np.float64]]) -> dict[str, Any]:
        return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in values.items()}

    if combined.total is not None:
        return {"total": arrays(combined.total)}
    return {"per_site": {s: arrays(v) for s, v in (combined.per_site or {}).items()}}


def _restore(data: Mapping[str, Any]) -> Combined:
    def arrays(values: Mapping[str, Any]) -> Values:
        return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}

    if "total" in data:
        return Combined(total=arrays(data["total"]))
    return Combined(per_site={s: arrays(v) for s, v in data["per_site"].items()})


# -- histograms and quantiles -----------------------------------------------------------


_NO_QUANTILE: dict[str, Any] = {"estimate": None, "interval": None, "error_bound": None}


def histogram_quantile(
    counts: npt.NDArray[np.float64], edges: npt.NDArray[np.float64], p: float
) -> dict[str, Any]:
    """The p-quantile (pandas' linear definition) from counts ``[below, bins..., above]``.

    Returns the estimate (values spread evenly inside their bin) and ``interval``: the
    bins holding the two order statistics the exact quantile interpolates between, so the
    exact pooled quantile lies inside it; ``error_bound`` is the interval's width. None
    where the quantile falls below or above the grid.
    """
    n = float(counts.sum())
    if n < 1:
        return dict(_NO_QUANTILE)
    h = (n - 1) * p
    cum = np.concatenate([[0.0], np.cumsum(counts)])

    def where(j: int) -> int:  # the column holding the j-th order statistic (0-based)
        return int(np.searchsorted(cum, j, side="right") - 1)

    lo_bin, hi_bin = where(math.floor(h)), where(math.ceil(h))
    bins = edges.size - 1
    if lo_bin == 0 or hi_bin == bins + 1:
        return dict(_NO_QUANTILE)

    def estimate(j: int, b: int) -> float:
        a, w = edges[b - 1], edges[b] - edges[b - 1]
        return float(a + (j - cum[b] + 0.5) / counts[b] * w)

    lo_val = estimate(math.floor(h), lo_bin)
    hi_val = estimate(math.ceil(h), hi_bin)
    value = lo_val + (h - math.floor(h)) * (hi_val - lo_val)
    interval = (float(edges[lo_bin - 1]), float(edges[hi_bin]))
    return {"estimate": value, "interval": list(interval), "error_bound": interval[1] - interval[0]}


def withheld_quantile(
    counts: npt.NDArray[np.float64],
    withheld: npt.NDArray[np.bool_],
    n: float,
    edges: npt.NDArray[np.float64],
    p: float,
) -> dict[str, Any]:
    """The p-quantile when some bins' counts are incomplete (withheld at some site).

    The ``n - sum(counts)`` withheld rows lie in the flagged bins; placing them all in the
    first flagged bin, then all in the last, bounds every possible cumulative count, so
    the interval from those two cases holds the exact quantile. The estimate is their
    midpoint.
    """
    if not withheld.any():
        return histogram_quantile(counts, edges, p)
    flagged = np.flatnonzero(withheld)
    hidden = max(float(n - counts.sum()), 0.0)
    early, late = counts.copy(), counts.copy()
    early[flagged[0]] += hidden
    late[flagged[-1]] += hidden
    low, high = histogram_quantile(early, edges, p), histogram_quantile(late, edges, p)
    if low["interval"] is None or high["interval"] is None:
        return dict(_NO_QUANTILE)
    interval = [low["interval"][0], high["interval"][1]]
    return {
        "estimate": 0.5 * (low["estimate"] + high["estimate"]),
        "interval": interval,
        "error_bound": interval[1] - interval[0],
    }


class Histogram(Analysis):
    """Counts on a grid, per group, with median and IQR interpolated from them.

    The grid is the plan's ``edges``; or, with ``bins`` and no edges, agreed in a first
    step from the sites' min/max, which needs every site to release extremes.
    """

    def __init__(
        self,
        id: str,
        variable: str,
        *,
        edges: Sequence[float] | None = None,
        bins: int | None = None,
        by: str | None = None,
        levels: Sequence[str] = (),
        by_site: bool = False,
        rules: DisclosureRules | None = None,
    ) -> None:
        self.id = id
        self.variable = variable
        plan = rules or DisclosureRules()
        _check_grouping(id, by, levels)
        if edges is not None and bins is not None:
            raise ConfigError(
                f"analysis '{id}': histogram of '{variable}' has both edges and bins; "
                f"give edges (a declared grid) or bins (a grid agreed from the extremes)"
            )
        if edges is None:
            if bins is None or bins < 1:
                raise ConfigError(
                    f"analysis '{id}': histogram of '{variable}' needs edges or bins >= 1"
                )
            if not plan.release_extremes:
                raise ConfigError(
                    f"analysis '{id}': histogram of '{variable}' has no declared edges and "
                    f"the plan's rules do not release extremes, so no grid can be agreed; "
                    f"declare the grid (edges) in the plan"
                )
        else:
            site.check_edges(edges, variable)
        self.edges = None if edges is None else [float(e) for e in edges]
        self.bins = bins
        self.base: dict[str, Any] = {"by": by, "levels": [*levels]}
        self.combine: Combine = "per_site" if by_site else "sum"
        self.labels = site.group_labels(self.base)

    def _histogram(self, edges: Sequence[float]) -> Question:
        params = {"variable": self.variable, "edges": list(edges), **self.base}
        return Question(self.id, "describe.histogram", params, self.combine)

    def start(self) -> Step:
        if self.edges is not None:
            return Step(self._histogram(self.edges), {"edges": self.edges})
        params = {"variables": [self.variable], **self.base}
        return Step(Question(self.id, "describe.extremes", params, "per_site"), {"edges": None})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        if step.memo["edges"] is None:
            edges = self._agreed_grid(combined)
            return Step(
                self._histogram(edges), {"edges": edges, "notes": list(combined.suppressed)}
            )
        return self.result_from(combined, step.memo["edges"], list(step.memo.get("notes", [])))

    def _agreed_grid(self, combined: Combined) -> list[float]:
        per_site = combined.per_site or {}
        silent = sorted(s for s, v in per_site.items() if not v)
        if silent:
            raise ProtocolError(
                f"analysis '{self.id}': site(s) {', '.join(silent)} do not release extremes, "
                f"so no histogram grid for '{self.variable}' can be agreed; declare the grid "
                f"(edges) in the plan"
            )
        lows = [v[f"{self.variable}:min"][0] for v in per_site.values()]
        highs = [v[f"{self.variable}:max"][0] for v in per_site.values()]
        if not (np.isfinite(lows).any() and np.isfinite(highs).any()):
            raise ProtocolError(
                f"analysis '{self.id}': no site released a min/max of '{self.variable}' "
                f"(too few values); declare the grid (edges) in the plan"
            )
        lo, hi = float(np.nanmin(lows)), float(np.nanmax(highs))
        if hi <= lo:
            hi = lo + 1.0
        return [float(e) for e in np.linspace(lo, hi, int(self.bins or 1) + 1)]

    def result_from(
        self, combined: Combined, edges: Sequence[float], notes: list[str]
    ) -> AnalysisResult:
        e = np.asarray(edges, dtype=np.float64)
        notes = [*notes, *combined.suppressed]
        groups = self._groups(totals(combined), e, notes)
        tables: dict[str, Any] = {"variable": self.variable, "edges": e.tolist(), "groups": groups}
        if combined.per_site is not None:
            tables["by_site"] = {
                site: self._groups(values, e, [], f"site {site}, ")
                for site, values in combined.per_site.items()
            }
        return AnalysisResult(self.id, "histogram", tables, tuple(notes))

    def _groups(
        self, t: Values, e: npt.NDArray[np.float64], notes: list[str], where: str = ""
    ) -> dict[str, Any]:
        """Counts, n and quartiles per group from (total or one site's) counts and flags."""
        counts, flags = t["counts"], t["counts" + SUPPRESSED_SUFFIX]
        groups: dict[str, Any] = {}
        for g, label in enumerate(self.labels):
            bins, withheld = counts[g, :-1], flags[g, :-1] > 0
            n_known = not flags[g, -1] > 0
            quartiles = {
                name: withheld_quantile(bins, withheld, counts[g, -1], e, p)
                if n_known
                else dict(_NO_QUANTILE)
                for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75))
            }
            q1, q3 = quartiles["q1"], quartiles["q3"]
            iqr: dict[str, Any] = dict(_NO_QUANTILE)
            if q1["estimate"] is not None and q3["estimate"] is not None:
                iqr = {
                    "estimate": q3["estimate"] - q1["estimate"],
                    "interval": None,
                    "error_bound": q1["error_bound"] + q3["error_bound"],
                }
            groups[label] = {
                "counts": bins.tolist(),
                "n": round(float(counts[g, -1])) if n_known else None,
                "withheld_bins": int(withheld.sum()),
                **quartiles,
                "iqr": iqr,
            }
            if not n_known:
                notes.append(
                    f"'{self.variable}' histogram ({where}{label}): n withheld, so the "
                    f"quartiles are withheld"
                )
            elif withheld.any():
                notes.append(
                    f"'{self.variable}' histogram ({where}{label}): {int(withheld.sum())} "
                    f"bin(s) withheld at some site; counts cover the released rows only and the "
                    f"quartile intervals are widened to hold wherever the withheld rows lie"
                )
        return groups

    def permits(self, question: Question) -> bool:
        if question.step == "describe.extremes":
            base = {"variables": [self.variable], **self.base}
            return self.edges is None and _permits(question, self.id, {question.step: base})
        base = {"variable": self.variable, **self.base}
        if self.edges is not None:
            base["edges"] = self.edges
        return _permits(question, self.id, {"describe.histogram": base})


class CrossTab(Analysis):
    """Counts of two categorical variables on declared levels (col None: one variable)."""

    def __init__(
        self,
        id: str,
        row: str,
        row_levels: Sequence[str],
        col: str | None = None,
        col_levels: Sequence[str] = (),
        *,
        by_site: bool = False,
    ) -> None:
        _check_unique(id, f"levels of '{row}'", row_levels)
        if col is None and col_levels:
            raise ConfigError(
                f"analysis '{id}': col_levels {list(col_levels)} given without a column variable"
            )
        if col is not None:
            _check_grouping(id, col, col_levels)
        self.id = id
        self.params: dict[str, Any] = {
            "row": row,
            "row_levels": [*map(str, row_levels)],
            "col": col,
            "col_levels": [*map(str, col_levels)],
        }
        self.combine: Combine = "per_site" if by_site else "sum"

    def start(self) -> Step:
        return Step(Question(self.id, "describe.crosstab", self.params, self.combine), {})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        rows, cols = site.crosstab_labels(self.params)
        t = totals(combined)
        flags = t["counts" + SUPPRESSED_SUFFIX]
        cells = [
            [None if flags[i, j] > 0 else round(float(t["counts"][i, j])) for j in range(len(cols))]
            for i in range(len(rows))
        ]
        notes = list(combined.suppressed)
        labels = [f"{a} x {b}" for a in rows for b in cols]
        notes += withheld_note(flags.ravel(), labels, "crosstab cell")
        tables: dict[str, Any] = {"rows": rows, "cols": cols, "counts": cells, **self.params}
        if combined.per_site is not None:
            tables["by_site"] = {  # None where the site withheld the cell
                site: [
                    [None if f > 0 else round(float(c)) for c, f in zip(row, flag, strict=True)]
                    for row, flag in zip(v["counts"], v["counts" + SUPPRESSED_SUFFIX], strict=True)
                ]
                for site, v in combined.per_site.items()
            }
        return AnalysisResult(self.id, "crosstab", tables, tuple(notes))

    def permits(self, question: Question) -> bool:
        return _permits(question, self.id, {"describe.crosstab": self.params})


class Correlation(Analysis):
    """Pearson correlation over complete cases (rows with every variable present).

    Complete cases, not pairwise: one n for the whole matrix, which stays positive
    semi-definite; the result says so and gives that n.
    """

    def __init__(self, id: str, variables: Sequence[str]) -> None:
        if len(variables) < 2:
            raise ConfigError(f"analysis '{id}': a correlation needs at least two variables")
        self.id = id
        self.params: dict[str, Any] = {"variables": [*variables]}

    def start(self) -> Step:
        return Step(Question(self.id, "describe.cc_sums", self.params, "sum"), {"stage": "sums"})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        t = totals(combined)
        if step.memo["stage"] == "sums":
            n = float(t["n"][0])
            if n < 2:
                raise ProtocolError(
                    f"analysis '{self.id}': {int(n)} complete case(s) released across sites; "
                    f"a correlation needs at least 2"
                )
            means = (t["sum"] / n).tolist()
            memo = {"stage": "cross", "n": n, "notes": list(combined.suppressed)}
            params = {**self.params, "means": means}
            return Step(Question(self.id, "describe.cc_cross", params, "sum"), memo)
        cross = t["cross"]
        sd = np.sqrt(np.diag(cross))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cross / np.outer(sd, sd)
        notes = [*step.memo["notes"], *combined.suppressed]
        tables = {
            "variables": self.params["variables"],
            "method": "pearson, complete cases",
            "n": int(step.memo["n"]),
            "matrix": [[_f(x) for x in row] for row in r],
        }
        return AnalysisResult(self.id, "correlation", tables, tuple(notes))

    def permits(self, question: Question) -> bool:
        steps = {"describe.cc_sums": self.params, "describe.cc_cross": self.params}
        return _permits(question, self.id, steps)
