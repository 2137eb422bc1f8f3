"""Descriptive statistics at a site: the sufficient statistics a table one is combined from.

Every computation here is registered with :func:`~fedcare.stats.protocol.site_computation`
and answers one question on the site's own rows under its disclosure rules. Shapes depend
only on the question (declared variables, group levels, grid), never on the rows, so a
``sum`` question's releases line up and can go through a secure sum.

Groups: a question may declare a grouping variable ``by`` with its ``levels`` (as text).
Every per-group array has columns ``["overall", *levels, "(other)"]`` ("(other)": the
grouping variable is missing or not a declared level), or just ``["overall"]``.

Variance is computed in two steps so it is exact and stable: ``describe.sums`` gives
n and the sum (hence the pooled mean), ``describe.centred`` the sum of squares about that
mean. Textbook sums of squares lose every digit when the mean is large against the SD.

Numbers from fewer than ``min_cell`` rows are withheld (see :mod:`fedcare.stats.disclosure`).
A sum may be noised (:mod:`fedcare.stats.noise`) only when the plan declares the variable's
``bounds``: values are then clipped to them and the sensitivity follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.core.errors import ConfigError
from fedcare.stats.disclosure import (
    SUPPRESSED_SUFFIX,
    Equation,
    complete_suppression,
    describe_suppressed,
    small,
)
from fedcare.stats.protocol import DisclosureRules, Release, SiteTable, Values, site_computation

OVERALL = "overall"
OTHER = "(other)"
MISSING = "(missing)"
ALL = "all"


# -- reading the site's rows ------------------------------------------------------------


def as_level(value: object) -> str | None:
    """A categorical value as the text a plan declares (1.0 -> "1"); None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def group_labels(params: Mapping[str, Any]) -> list[str]:
    """The columns of every per-group array of a question."""
    if params.get("by") is None:
        return [OVERALL]
    return [OVERALL, *[str(level) for level in params.get("levels", [])], OTHER]


def _column(table: SiteTable, name: str) -> pd.Series:
    if name not in table.frame.columns:
        raise ConfigError(
            f"site {table.site}: the plan asks for column '{name}' but "
            f"{table.source or 'its table'} has columns {sorted(map(str, table.frame.columns))}"
        )
    return table.frame[name]


def numeric(table: SiteTable, name: str) -> npt.NDArray[np.float64]:
    """A numeric column as float64 with NaN for missing; a text value is an error."""
    column = _column(table, name)
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & column.notna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise ConfigError(
            f"site {table.site}: {table.source or 'table'} row {row + 1}, column '{name}': "
            f"expected a number, found {column.iloc[row]!r}"
        )
    return values


def levels_of(table: SiteTable, name: str) -> list[str | None]:
    """A categorical column as declared-level text (None for missing)."""
    return [as_level(v) for v in _column(table, name).tolist()]


def membership(params: Mapping[str, Any], table: SiteTable) -> npt.NDArray[np.bool_]:
    """(groups, rows): which rows count towards each column of :func:`group_labels`."""
    n = len(table.frame)
    by = params.get("by")
    if by is None:
        return np.ones((1, n), dtype=bool)
    declared = [str(level) for level in params.get("levels", [])]
    found = levels_of(table, str(by))
    rows = np.zeros((len(declared) + 2, n), dtype=bool)
    rows[0] = True
    index = {level: i + 1 for i, level in enumerate(declared)}
    for r, level in enumerate(found):
        rows[index.get(level, len(declared) + 1) if level is not None else -1, r] = True
    return rows


def group_equations(groups: int, offset: int = 0, stride: int = 1) -> list[Equation]:
    """Overall = sum of the group columns (one equation), at flat positions."""
    if groups == 1:
        return []
    return [(offset, [offset + stride * g for g in range(1, groups)])]


# -- suppression helpers ----------------------------------------------------------------


def _withhold(
    values: Values,
    key: str,
    counts: npt.NDArray[np.float64],
    equations: Sequence[Equation],
    labels: Sequence[str],
    rules: DisclosureRules,
    what: str,
    dependents: Sequence[str] = (),
) -> tuple[str, ...]:
    """Release ``counts`` under ``key``, withholding small and recoverable cells.

    ``dependents``: keys of arrays (same shape) computed from the same rows, withheld with
    their count. Adds the ``:suppressed`` flags for ``key`` and each dependent.
    """
    primary = small(counts, rules.min_cell)
    final = complete_suppression(counts, primary, equations).reshape(counts.shape)
    values[key] = np.where(final, 0.0, counts)
    values[key + SUPPRESSED_SUFFIX] = final.astype(np.float64)
    for dep in dependents:
        values[dep] = np.where(final, 0.0, values[dep])
        values[dep + SUPPRESSED_SUFFIX] = final.astype(np.float64)
    return describe_suppressed(labels, primary, final, what, rules.min_cell)


def _withhold_counts(
    values: Values,
    variable: str,
    n: npt.NDArray[np.float64],
    missing: npt.NDArray[np.float64],
    labels: Sequence[str],
    rules: DisclosureRules,
) -> tuple[str, ...]:
    """Release a variable's n (with its sum) and missing counts per group, jointly.

    n + missing is the group's row count, which every other variable's counts give away,
    so a withheld n with a released missing count (or the reverse) could be recovered:
    they are one equation, besides overall = sum of the groups for each.
    """
    g = len(labels)
    rows = n + missing  # not released: a pseudo-total that links n and missing
    flat = np.concatenate([n, missing, rows])
    equations = [*group_equations(g), *group_equations(g, offset=g)]
    equations += [(2 * g + i, [i, g + i]) for i in range(g)]
    primary = small(flat[: 2 * g], rules.min_cell)
    withheld = np.concatenate([primary, np.zeros(g, bool)])
    final = complete_suppression(flat, withheld, equations, fixed=range(2 * g, 3 * g))
    n_out, missing_out = final[:g], final[g : 2 * g]
    values[f"{variable}:n"] = np.where(n_out, 0.0, n)
    values[f"{variable}:sum"] = np.where(n_out, 0.0, values[f"{variable}:sum"])
    values[f"{variable}:missing"] = np.where(missing_out, 0.0, missing)
    for key, mask in (("n", n_out), ("sum", n_out), ("missing", missing_out)):
        values[f"{variable}:{key}{SUPPRESSED_SUFFIX}"] = mask.astype(np.float64)
    return (
        *describe_suppressed(labels, primary[:g], n_out, f"'{variable}' n", rules.min_cell),
        *describe_suppressed(
            labels, primary[g:], missing_out, f"'{variable}' missing", rules.min_cell
        ),
    )


def bounds_of(params: Mapping[str, Any], variable: str) -> tuple[float, float] | None:
    """The plan's declared range of a variable (clips it and bounds its sensitivity)."""
    declared = params.get("bounds", {}).get(variable)
    if declared is None:
        return None
    lo, hi = (float(b) for b in declared)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(
            f"bounds of '{variable}' must be finite with low < high, found {declared}"
        )
    return lo, hi


def count_sensitivity(groups: int) -> tuple[float, float]:
    """One patient changes the overall column and at most one group column by 1."""
    return (1.0, 1.0) if groups == 1 else (2.0, math.sqrt(2.0))


# -- the computations -------------------------------------------------------------------


@site_computation("describe.sums")
def site_sums(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Per variable and group: ``n`` (non-missing), ``missing`` and ``sum``."""
    members = membership(params, table)
    labels = group_labels(params)
    groups = len(labels)
    values: Values = {}
    lines: list[str] = []
    sensitivity: dict[str, tuple[float, float]] = {}
    for variable in params["variables"]:
        x = numeric(table, variable)
        bounds = bounds_of(params, variable)
        present = ~np.isnan(x)
        clean = np.where(present, x, 0.0)
        if bounds is not None:
            clean = np.where(present, np.clip(clean, *bounds), 0.0)
            reach = max(abs(bounds[0]), abs(bounds[1]))
            l1, l2 = count_sensitivity(groups)
            sensitivity[f"{variable}:sum"] = (l1 * reach, l2 * reach)
        n = (members & present).sum(axis=1).astype(np.float64)
        missing = (members & ~present).sum(axis=1).astype(np.float64)
        values[f"{variable}:sum"] = members.astype(np.float64) @ clean
        lines += _withhold_counts(values, variable, n, missing, labels, rules)
        sensitivity[f"{variable}:n"] = count_sensitivity(groups)
        sensitivity[f"{variable}:missing"] = count_sensitivity(groups)
    return Release(values, tuple(lines), sensitivity)


@site_computation("describe.centred")
def site_centred(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Per variable and group: the sum of squares about the given (pooled) group means."""
    members = membership(params, table)
    labels = group_labels(params)
    groups = len(labels)
    values: Values = {}
    lines: list[str] = []
    sensitivity: dict[str, tuple[float, float]] = {}
    for variable in params["variables"]:
        x = numeric(table, variable)
        bounds = bounds_of(params, variable)
        present = ~np.isnan(x)
        if bounds is not None:
            x = np.clip(x, *bounds)
            spread = (bounds[1] - bounds[0]) ** 2
            l1, l2 = count_sensitivity(groups)
            sensitivity[f"{variable}:ss"] = (l1 * spread, l2 * spread)
        means = np.array(
            [np.nan if m is None else float(m) for m in params["means"][variable]], dtype=np.float64
        )
        if means.shape != (groups,):
            raise ConfigError(
                f"describe.centred: '{variable}' needs {groups} group means, found {means.size}"
            )
        if bounds is not None:  # a noised mean may fall outside; |x - m| <= hi - lo needs it in
            means = np.clip(means, *bounds)
        ss = np.zeros(groups)
        for g in range(groups):
            rows = members[g] & present
            if rows.any() and np.isfinite(means[g]):
                ss[g] = float(np.sum((x[rows] - means[g]) ** 2))
        n = (members & present).sum(axis=1).astype(np.float64)
        scratch: Values = {f"{variable}:ss": ss}  # n is released by describe.sums
        lines += _withhold(
            scratch,
            f"{variable}:n",
            n,
            group_equations(groups),
            labels,
            rules,
            f"'{variable}' sum of squares",
            [f"{variable}:ss"],
        )
        values[f"{variable}:ss"] = scratch[f"{variable}:ss"]
        values[f"{variable}:ss" + SUPPRESSED_SUFFIX] = scratch[f"{variable}:ss" + SUPPRESSED_SUFFIX]
    return Release(values, tuple(lines), sensitivity)


@site_computation("describe.extremes")
def site_extremes(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Per variable and group: min and max, only where the site's rules release extremes.

    A per-site question (extremes do not add up); a group with fewer than ``min_cell``
    values gets NaN: an extreme from few rows is nearly a patient's own value.
    """
    if not rules.release_extremes:
        return Release({}, ("min/max withheld: this site's rules do not release extremes",))
    members = membership(params, table)
    labels = group_labels(params)
    values: Values = {}
    lines: list[str] = []
    for variable in params["variables"]:
        x = numeric(table, variable)
        low = np.full(len(labels), np.nan)
        high = np.full(len(labels), np.nan)
        flags = np.zeros(len(labels))
        withheld = []
        for g, label in enumerate(labels):
            seen = x[members[g] & ~np.isnan(x)]
            if seen.size >= max(rules.min_cell, 1):
                low[g], high[g] = float(seen.min()), float(seen.max())
            elif seen.size:
                withheld.append(label)
                flags[g] = 1.0
        if withheld:
            lines.append(
                f"'{variable}' min/max: withheld {', '.join(withheld)} "
                f"(fewer than min_cell={rules.min_cell} values)"
            )
        values[f"{variable}:min"] = low  # NaN: no values, or withheld (flagged)
        values[f"{variable}:max"] = high
        values[f"{variable}:withheld"] = flags
    return Release(values, tuple(lines))


def check_edges(edges: Sequence[float], variable: str) -> npt.NDArray[np.float64]:
    """A histogram grid: at least two finite, strictly increasing edges."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.isfinite(e).all() or np.any(np.diff(e) <= 0):
        raise ConfigError(
            f"histogram of '{variable}': edges must be at least two finite, strictly "
            f"increasing numbers, found {list(edges)}"
        )
    return e


def bin_index(x: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """Column of each value in ``[below, bin 1 .. bin B, above]``; bins are [a, b) except
    the last, which is closed; NaN gets -1."""
    idx = np.searchsorted(edges, x, side="right")  # 0: below, B+1: above or == last edge
    idx = np.where(x == edges[-1], edges.size - 1, idx)
    return np.where(np.isnan(x), -1, idx)


@site_computation("describe.histogram")
def site_histogram(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Counts per group on the declared grid: ``counts`` has shape (groups, bins + 3).

    Columns: below the grid, the bins, above the grid, then the group's non-missing n, so
    rows and columns are equations for complementary suppression.
    """
    variable = str(params["variable"])
    edges = check_edges(params["edges"], variable)
    x = numeric(table, variable)
    members = membership(params, table)
    labels = group_labels(params)
    bins = edges.size - 1
    width = bins + 3
    counts = np.zeros((len(labels), width))
    idx = bin_index(x, edges)
    for g in range(len(labels)):
        chosen = idx[members[g] & (idx >= 0)]
        counts[g, : bins + 2] = np.bincount(chosen, minlength=bins + 2)
        counts[g, -1] = chosen.size
    equations: list[Equation] = [
        (g * width + bins + 2, [g * width + b for b in range(bins + 2)]) for g in range(len(labels))
    ]
    for b in range(width):
        equations += group_equations(len(labels), offset=b, stride=width)
    names = ["below", *[f"[{edges[b]:g}, {edges[b + 1]:g})" for b in range(bins)], "above", "n"]
    cell_labels = [f"{g}/{c}" for g in labels for c in names]
    values: Values = {}
    lines = _withhold(values, "counts", counts, equations, cell_labels, rules, f"'{variable}' bins")
    l1, l2 = count_sensitivity(len(labels))
    return Release(values, lines, {"counts": (2 * l1, math.sqrt(2) * l2)})


def crosstab_labels(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Row and column labels of a crosstab release, with the catch-all and totals."""
    rows = [*map(str, params["row_levels"]), MISSING, "total"]
    col_levels = params.get("col_levels") if params.get("col") is not None else [ALL]
    cols = [*map(str, col_levels or []), MISSING, "total"]
    return rows, cols


@site_computation("describe.crosstab")
def site_crosstab(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Counts of ``row`` x ``col`` on the declared levels, with totals.

    A value missing or not declared goes to ``(missing)``, so the totals are the site's n.
    """
    row_labels, col_labels = crosstab_labels(params)
    r_index = {level: i for i, level in enumerate(row_labels[:-2])}
    c_index = {level: i for i, level in enumerate(col_labels[:-2])}
    nr, nc = len(row_labels), len(col_labels)
    counts = np.zeros((nr, nc))
    rows = levels_of(table, str(params["row"]))
    # No column variable: one column of every row (a variable's counts, not a crosstab).
    col = params.get("col")
    cols = levels_of(table, str(col)) if col is not None else [ALL] * len(rows)
    for a, b in zip(rows, cols, strict=True):
        i = r_index.get(a, nr - 2) if a is not None else nr - 2
        j = c_index.get(b, nc - 2) if b is not None else nc - 2
        counts[i, j] += 1
    counts[:, -1] = counts[:, :-1].sum(axis=1)
    counts[-1, :] = counts[:-1, :].sum(axis=0)
    equations: list[Equation] = [
        (i * nc + nc - 1, [i * nc + j for j in range(nc - 1)]) for i in range(nr)
    ]
    equations += [((nr - 1) * nc + j, [i * nc + j for i in range(nr - 1)]) for j in range(nc)]
    labels = [f"{a} x {b}" for a in row_labels for b in col_labels]
    values: Values = {}
    what = f"'{params['row']}' x '{params['col']}' cells"
    lines = _withhold(values, "counts", counts, equations, labels, rules, what)
    return Release(values, lines, {"counts": (4.0, 2.0)})  # a row, a column, a total, the grand


@site_computation("describe.cc_sums")
def site_cc_sums(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Complete cases of ``variables``: their count and sums (step 1 of a correlation)."""
    x = _complete(params, table)
    values: Values = {"n": np.array([float(x.shape[0])]), "sum": x.sum(axis=0)}
    lines = _withhold(
        values, "n", values["n"], [], ["complete cases"], rules, "correlation", ["sum"]
    )
    values["sum" + SUPPRESSED_SUFFIX] = np.repeat(values["sum" + SUPPRESSED_SUFFIX], x.shape[1])
    return Release(values, lines)


@site_computation("describe.cc_cross")
def site_cc_cross(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    """Complete cases: cross products centred on the pooled means (step 2)."""
    x = _complete(params, table)
    means = np.asarray(params["means"], dtype=np.float64)
    centred = x - means
    cross = centred.T @ centred
    n = float(x.shape[0])
    if small([n], rules.min_cell)[0]:
        line = f"correlation: withheld (fewer than min_cell={rules.min_cell} complete cases)"
        return Release({"cross": np.zeros_like(cross), "withheld": np.array([1.0])}, (line,))
    return Release({"cross": cross, "withheld": np.array([0.0])})


def _complete(params: Mapping[str, Any], table: SiteTable) -> npt.NDArray[np.float64]:
    variables = list(params["variables"])
    x = np.column_stack([numeric(table, v) for v in variables]) if variables else np.zeros((0, 0))
    return x[~np.isnan(x).any(axis=1)]
