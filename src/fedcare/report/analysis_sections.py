"""The analysis report's sections: one renderer per analysis kind, and any JSON table.

A kind with a renderer here (table one, Kaplan-Meier with its at-risk table, log-rank,
Cox with its forest plot, C-index) draws its own section; any other analysis is shown as
the tables it returned (:func:`generic_section`).
"""

from __future__ import annotations

import base64
import html
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from fedcare.report.analysis_plots import forest_png, km_png
from fedcare.report.analysis_results import AnalysisEntry

_DASH = '<span class="na">—</span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


Renderer = Callable[[AnalysisEntry], str]
RENDERERS: dict[str, Renderer] = {}
"""Section renderers by analysis kind; a kind without one is shown as its tables."""


def renders(kind: str) -> Callable[[Renderer], Renderer]:
    """Register the section renderer of analysis ``kind``."""

    def register(fn: Renderer) -> Renderer:
        RENDERERS[kind] = fn
        return fn

    return register


def number(value: Any) -> str:
    """A table cell: numbers to 4 significant digits (integers whole), None as a dash."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return _DASH
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return _e(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _columns(value: Mapping[str, Any]) -> int | None:
    """The common length when every value is a list of scalars of one length."""
    lengths = {len(v) for v in value.values() if isinstance(v, list) and all(map(_is_scalar, v))}
    lists = all(isinstance(v, list) for v in value.values())
    return lengths.pop() if lists and len(lengths) == 1 and value else None


def table_html(name: str, value: Any, depth: int = 0) -> str:
    """Any JSON table as HTML: columns of equal length as a table, a mapping of numbers as
    a two-column table, a list of uniform records as rows; nested mappings by heading."""
    title = f"<h4>{_e(name)}</h4>" if name else ""
    if _is_scalar(value):
        return f"<p>{title}{number(value)}</p>" if name else number(value)
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) and value:
            keys = list(dict.fromkeys(k for v in value for k in v))
            if all(_is_scalar(v.get(k)) for v in value for k in keys):
                head = "".join(f"<th>{_e(k)}</th>" for k in keys)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{number(v.get(k))}</td>" for k in keys) + "</tr>"
                    for v in value
                )
                return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        cells = ", ".join(number(v) if _is_scalar(v) else _e(v) for v in value)
        return f"{title}<p>{cells}</p>"
    if isinstance(value, dict):
        if _columns(value) is not None:
            keys = list(value)
            head = "".join(f"<th>{_e(k)}</th>" for k in keys)
            rows = "".join(
                "<tr>" + "".join(f"<td>{number(value[k][i])}</td>" for k in keys) + "</tr>"
                for i in range(len(value[keys[0]]))
            )
            return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        if all(_is_scalar(v) for v in value.values()):
            rows = "".join(
                f'<tr><th scope="row">{_e(k)}</th><td>{number(v)}</td></tr>'
                for k, v in value.items()
            )
            return f"{title}<table><tbody>{rows}</tbody></table>"
        scalars = {k: v for k, v in value.items() if _is_scalar(v)}
        parts = [table_html("", scalars, depth + 1)] if scalars else []
        parts += [table_html(str(k), v, depth + 1) for k, v in value.items() if not _is_scalar(v)]
        return title + "".join(parts)
    return f"{title}<p>{_e(value)}</p>"


def generic_section(entry: AnalysisEntry) -> str:
    """An analysis without its own renderer: every table it returned."""
    return "".join(table_html(str(name), value) for name, value in entry.tables.items())


def figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    width = round(int.from_bytes(png[16:20], "big") * 0.72)  # as the study report scales
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _rows(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


@renders("describe")
def table_one(entry: AnalysisEntry) -> str:
    """Rows are variables and statistics, columns overall and each group level."""
    tables = entry.tables
    columns = [str(c) for c in tables.get("columns", [])]
    rows = [
        [_e(r.get("variable", "")), _e(r.get("statistic", ""))]
        + [_e(r.get("cells", {}).get(c, "")) for c in columns]
        for r in tables.get("rows", [])
    ]
    by = tables.get("by")
    caption = f"Columns by '{by}'." if by else ""
    bounds = [r for r in tables.get("rows", []) if "error_bound" in r]
    if bounds:
        caption += (
            " Medians and quartiles are interpolated from the pooled histogram on the "
            "declared grid; each is within the stated error bound (the widest bin it falls "
            "in) of the pooled-rows value: "
            + "; ".join(
                f"{r['variable']} ±{number(max(v or 0 for v in r['error_bound'].values()))}"
                for r in bounds
            )
            + "."
        )
    return _rows(["Variable", "Statistic", *columns], rows, caption.strip())


def _at_risk(table: Mapping[str, Any]) -> str:
    times = table.get("times", [])
    names = [k for k in table if k != "times"]
    rows = [[_e(n)] + [number(v) for v in table[n]] for n in names]
    return _rows(["Number at risk", *[number(t) for t in times]], rows)


def _logrank(test: Mapping[str, Any]) -> str:
    observed, expected = test.get("observed", {}), test.get("expected", {})
    rows = [[_e(level), number(observed[level]), number(expected.get(level))] for level in observed]
    summary = (
        f"<p>Log-rank test across the levels of <strong>{_e(test.get('group'))}</strong>: "
        f"χ² = {number(test.get('statistic'))} on {number(test.get('df'))} df, "
        f"p = {number(test.get('p_value'))}.</p>"
    )
    return summary + _rows(["Group", "Observed events", "Expected events"], rows)


@renders("km")
@renders("logrank")
def kaplan_meier(entry: AnalysisEntry) -> str:
    tables = entry.tables
    curves = tables.get("curves", {})
    alpha = float(tables.get("alpha", 0.05))
    caption = (
        f"Kaplan-Meier estimate with pointwise {100 * (1 - alpha):g}% Greenwood confidence "
        f"bands ({'exact event times' if tables.get('mode') == 'exact' else 'times on the declared grid'})."
    )
    parts = [figure(km_png(curves), "Kaplan-Meier survival curves", caption)] if curves else []
    medians = tables.get("median", {})
    if medians:
        parts.append(
            _rows(
                ["Curve", "Median survival time"], [[_e(k), number(v)] for k, v in medians.items()]
            )
        )
    if "at_risk_table" in tables:
        parts.append(_at_risk(tables["at_risk_table"]))
    if "logrank" in tables:
        parts.append(_logrank(tables["logrank"]))
    return "".join(parts)


@renders("cox")
def cox(entry: AnalysisEntry) -> str:
    t = entry.tables
    names = [str(n) for n in t.get("covariates", [])]
    alpha = float(t.get("alpha", 0.05))
    level = f"{100 * (1 - alpha):g}%"
    rows = [
        [
            _e(name),
            number(t["coef"][i]),
            number(t["se"][i]),
            number(t["hazard_ratio"][i]),
            f"{number(t['hr_lower'][i])} – {number(t['hr_upper'][i])}",
            number(t["p_value"][i]),
        ]
        for i, name in enumerate(names)
    ]
    strata = t.get("strata")
    about = (
        f"Efron ties; n = {number(t.get('n'))}, events = {number(t.get('events'))}, "
        f"log-likelihood {number(t.get('log_likelihood'))}, {number(t.get('iterations'))} "
        f"Newton evaluations{'' if t.get('converged', True) else ' (did not converge)'}"
        + (
            f"; a baseline hazard per {'site' if strata == 'site' else repr(strata)}"
            if strata
            else ""
        )
        + "."
    )
    lr = t.get("likelihood_ratio", {})
    parts = [
        figure(
            forest_png(names, t["hazard_ratio"], t["hr_lower"], t["hr_upper"]),
            "Forest plot of hazard ratios",
            f"Hazard ratios with {level} confidence intervals (log scale).",
        )
        if names
        else "",
        _rows(["Covariate", "coef", "SE", "HR", f"HR {level} CI", "p"], rows, about),
    ]
    if lr:
        parts.append(
            f"<p class='note'>Likelihood-ratio test: {number(lr.get('statistic'))} on "
            f"{number(lr.get('df'))} df, p = {number(lr.get('p_value'))}.</p>"
        )
    return "".join(parts)


@renders("cindex")
def concordance(entry: AnalysisEntry) -> str:
    t = entry.tables
    per_site = t.get("per_site", {})
    rows = [
        [_e(site), number(c.get("c_index")), number(c.get("comparable"))]
        for site, c in per_site.items()
    ]
    pooled = t.get("pooled")
    if pooled is not None:
        rows.append(
            [
                "<strong>pooled</strong>",
                number(pooled.get("c_index")),
                number(pooled.get("comparable")),
            ]
        )
    caption = (
        f"Harrell's C. Mean of the sites' C-index: {number(t.get('mean_of_sites'))} (FLamby's "
        "metric). Pooled: every comparable pair over all sites, from each site's events' "
        "(time, risk) released to the others, so it reveals event times and risks."
    )
    return _rows(["Site", "C-index", "Comparable pairs"], rows, caption)


def _matrix(rows: list[str], cols: list[str], cells: list[list[Any]], corner: str) -> str:
    body = [
        [f"<strong>{_e(r)}</strong>"]
        + [number(v) if v is not None else '<span class="na">withheld</span>' for v in line]
        for r, line in zip(rows, cells, strict=False)
    ]
    return _rows([corner, *cols], body)


@renders("crosstab")
def crosstab(entry: AnalysisEntry) -> str:
    t = entry.tables
    corner = f"{t.get('row')} \\ {t.get('col')}" if t.get("col") else str(t.get("row"))
    return _matrix(
        [str(r) for r in t.get("rows", [])],
        [str(c) for c in t.get("cols", [])],
        t.get("counts", []),
        corner,
    )


@renders("correlation")
def correlation(entry: AnalysisEntry) -> str:
    t = entry.tables
    names = [str(v) for v in t.get("variables", [])]
    caption = f"<p class='note'>{_e(t.get('method', ''))}; n = {number(t.get('n'))}.</p>"
    return _matrix(names, names, t.get("matrix", []), "") + caption


@renders("histogram")
def histogram(entry: AnalysisEntry) -> str:
    t = entry.tables
    edges = [float(e) for e in t.get("edges", [])]
    bins = (
        [f"< {number(edges[0])}"]
        + [f"{number(a)} – {number(b)}" for a, b in itertools.pairwise(edges)]
        + [f"≥ {number(edges[-1])}"]
        if edges
        else []
    )
    groups = t.get("groups", {})
    counts = {g: v.get("counts", []) for g, v in groups.items()}
    body = [[_e(b)] + [number(counts[g][i]) for g in groups] for i, b in enumerate(bins)]
    parts = [_rows([str(t.get("variable", "")), *groups], body)]
    quantiles = [
        [_e(g), _e(q), number(v[q].get("estimate")), number(v[q].get("error_bound"))]
        for g, v in groups.items()
        for q in ("q1", "median", "q3")
        if isinstance(v.get(q), dict)
    ]
    if quantiles:
        parts.append(
            _rows(
                ["Group", "Quantile", "Estimate", "Error bound"],
                quantiles,
                "Interpolated within the bin that holds the quantile of the pooled counts; "
                "the exact pooled quantile is within the error bound.",
            )
        )
    return "".join(parts)
