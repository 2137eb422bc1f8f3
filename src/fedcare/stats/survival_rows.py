"""A site's survival rows as validated arrays: time, event, covariates and group codes.

Every survival computation at a site starts here, so every one refuses bad rows the same
way: a clear error naming the site, file, row and column. Rows with a missing covariate or
group are left out (complete-case analysis, as lifelines and R do after ``na.omit``); how
many is said in a note that travels with the release, never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.stats.protocol import DisclosureRules, SiteTable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SurvivalRows:
    """One site's usable rows: ``time`` (>= 0), ``event`` (0/1 as float), ``x`` (rows x
    covariates, float), ``group`` (index into the declared levels, or all 0 without a
    grouping), ``entry`` (delayed-entry time <= ``time``, or None without an entry role:
    at risk from the start, time 0 included); ``notes``: what was left out and why."""

    time: FloatArray
    event: FloatArray
    x: FloatArray
    group: IntArray
    notes: tuple[str, ...]
    entry: FloatArray | None = None


def _where(table: SiteTable) -> str:
    return f"site {table.site}" + (f" ({table.source})" if table.source else "")


def _row(table: SiteTable, row: int) -> str:
    """1-based data row; for a CSV file also its line (the header is line 1)."""
    return f"row {row + 1}" + (f" (line {row + 2})" if table.source.endswith(".csv") else "")


def _column(table: SiteTable, name: str, what: str) -> pd.Series:
    if name not in table.frame.columns:
        raise ValueError(
            f"{_where(table)}: the {what} column '{name}' is not in the table; "
            f"columns: {', '.join(map(str, table.frame.columns))}"
        )
    return table.frame[name]


def _numeric(table: SiteTable, name: str, what: str) -> FloatArray:
    series = _column(table, name, what)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) & series.notna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{_where(table)}, {_row(table, row)}, column '{name}': expected a number for the "
            f"{what}, found {series.iloc[row]!r}"
        )
    return values


def survival_rows(
    table: SiteTable,
    covariates: Sequence[str] = (),
    group: str | None = None,
    levels: Sequence[str] = (),
    allow_entry: bool = False,
) -> SurvivalRows:
    """The site's rows for a survival computation, validated.

    ``time`` must be present, finite and >= 0 and ``event`` 0 or 1 on every row (a survival
    table without them is unusable, so these are errors, not left-out rows); ``covariates``
    are numeric columns; ``group`` a column whose values (as text) must be among ``levels``.
    An ``entry`` role (left truncation: a patient is at risk only after entry, at times
    ``entry < t <= time``) is refused unless the computation adjusts for it
    (``allow_entry``).
    """
    if table.time is None or table.event is None:
        raise ValueError(
            f"{_where(table)}: the table declares no time/event roles; a survival analysis "
            "needs a schema with a 'time' and an 'event' column"
        )
    if table.entry is not None and not allow_entry:
        raise ValueError(
            f"{_where(table)}: the table declares an entry time '{table.entry}' (left "
            "truncation) and this computation assumes every patient is at risk from time 0 "
            "(exact Kaplan-Meier and Cox adjust for delayed entry; a time grid and the "
            "C-index do not): drop the entry role or use one that does"
        )
    time = _numeric(table, table.time, "time")
    event = _numeric(table, table.event, "event")
    for name, values, what in ((table.time, time, "time"), (table.event, event, "event")):
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise ValueError(
                f"{_where(table)}, {_row(table, int(missing[0]))}, column '{name}': the {what} is "
                f"missing ({missing.size} rows); every row of a survival table needs one"
            )
    bad_time = np.flatnonzero(~np.isfinite(time) | (time < 0))
    if bad_time.size:
        row = int(bad_time[0])
        raise ValueError(
            f"{_where(table)}, {_row(table, row)}, column '{table.time}': expected a time >= 0, "
            f"found {float(time[row])!r}"
        )
    bad_event = np.flatnonzero((event != 0) & (event != 1))
    if bad_event.size:
        row = int(bad_event[0])
        raise ValueError(
            f"{_where(table)}, {_row(table, row)}, column '{table.event}': expected an event "
            f"indicator 0 or 1, found {float(event[row])!r}"
        )
    n = len(time)
    entry: FloatArray | None = None
    if table.entry is not None:
        entry = _numeric(table, table.entry, "entry time")
        bad_entry = np.flatnonzero(~np.isfinite(entry) | (entry < 0) | (entry > time))
        if bad_entry.size:
            row = int(bad_entry[0])
            raise ValueError(
                f"{_where(table)}, {_row(table, row)}, column '{table.entry}': expected an "
                f"entry time >= 0 and <= the time {float(time[row])!r}, found {float(entry[row])!r}"
            )
    x = np.empty((n, len(covariates)), dtype=np.float64)
    for k, name in enumerate(covariates):
        x[:, k] = _numeric(table, name, "covariate")
        infinite = np.flatnonzero(np.isinf(x[:, k]))
        if infinite.size:
            row = int(infinite[0])
            raise ValueError(
                f"{_where(table)}, {_row(table, row)}, column '{name}': expected a finite "
                f"number for the covariate, found {float(x[row, k])!r}"
            )
    codes = np.zeros(n, dtype=np.int64)
    keep = ~np.isnan(x).any(axis=1)
    if group is not None:
        raw = _column(table, group, "grouping")
        text = raw.astype(str).to_numpy()
        present = raw.notna().to_numpy()
        index = {str(level): i for i, level in enumerate(levels)}
        unknown = np.flatnonzero(present & ~np.isin(text, list(index)))
        if unknown.size:
            row = int(unknown[0])
            raise ValueError(
                f"{_where(table)}, {_row(table, row)}, column '{group}': the value {text[row]!r} is "
                f"not one of the plan's levels {list(index)}"
            )
        codes = np.array([index.get(v, -1) for v in text], dtype=np.int64)
        keep &= present
    notes: tuple[str, ...] = ()
    dropped = int(n - keep.sum())
    if dropped:
        columns = [*covariates, *([group] if group is not None else [])]
        notes = (f"{dropped} of {n} rows left out: missing {', '.join(columns)} (complete cases)",)
    return SurvivalRows(
        time[keep], event[keep], x[keep], codes[keep], notes, None if entry is None else entry[keep]
    )


def releases_small_counts(rules: DisclosureRules) -> bool:
    """Whether ``rules`` let a count of one leave the site (``min_cell`` 0 or 1: control off).

    Exact event times come with counts of one by nature, so the exact modes run only then.
    """
    return rules.min_cell <= 1
