"""The checks one site's table must pass before any training or analysis, each reported,
none raised.

Every issue names the site, the file and the column, what was expected and an example of
what was found, so the engineer at that hospital can fix it without seeing other sites.
"""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from fedcare.data.harmonise import binary_values, category_strings
from fedcare.data.schema import (
    FeatureSpec,
    Severity,
    SurvivalSpec,
    TabularSchema,
    TargetSpec,
    ValidationIssue,
)


class _Issues:
    def __init__(self, site: str, file: str) -> None:
        self.site, self.file = site, file
        self.items: list[ValidationIssue] = []

    def add(
        self,
        problem: str,
        column: str | None,
        expected: str | None = None,
        found: str | None = None,
        severity: Severity = "error",
    ) -> None:
        self.items.append(
            ValidationIssue(severity, problem, self.site, self.file, column, expected, found)
        )

    def where(self, row: int) -> str:
        """1-based data row; for CSV also the line in the file (the header is line 1)."""
        return f"row {row + 1}" + (f" (line {row + 2})" if self.file.endswith(".csv") else "")


def check_table(
    site: str, file: str, frame: pd.DataFrame, schema: TabularSchema
) -> list[ValidationIssue]:
    """Every problem in one site's table."""
    issues = _Issues(site, file)
    if frame.empty:
        issues.add("the table has no rows", None)
        return issues.items
    needed = [*schema.outcome_roles().values()] + [f.name for f in schema.features if f.required]
    if schema.split_column:
        needed.append(schema.split_column)
    missing = [c for c in needed if c not in frame.columns]
    if len(frame.columns) == 1 and len(missing) > 1:
        _one_column(issues, str(frame.columns[0]), missing)
    else:
        declared = set(needed) | {f.name for f in schema.features}
        for column in missing:
            _missing_column(issues, column, [str(c) for c in frame.columns], declared)
    for feature in schema.features:
        if feature.name in frame.columns:
            _check_feature(issues, feature, frame[feature.name])
    if schema.target is not None and schema.target.column in frame.columns:
        _check_target(issues, schema.target, frame[schema.target.column])
    if schema.survival is not None:
        _check_survival(issues, schema.survival, frame)
    if schema.split_column and schema.split_column in frame.columns:
        values = set(category_strings(frame[schema.split_column]))
        if frame[schema.split_column].isna().any() or not values <= {"train", "test"}:
            issues.add(
                "split column must hold 'train' or 'test' in every row",
                schema.split_column,
                "train/test",
                str(sorted(values - {"train", "test"})[:5] or "missing values"),
            )
    return issues.items


def _missing_column(issues: _Issues, column: str, present: list[str], declared: set[str]) -> None:
    """One issue per missing column, with the file's closest undeclared column name."""
    spare = [c for c in present if c not in declared]
    by_case = {c.casefold(): c for c in spare}
    close = [by_case[column.casefold()]] if column.casefold() in by_case else []
    close = close or difflib.get_close_matches(column, spare, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    issues.add(
        f"missing column{hint}",
        column,
        expected="a column of that name",
        found=f"columns {present[:12]}"
        + (f" and {len(present) - 12} more" if len(present) > 12 else ""),
    )


def _one_column(issues: _Issues, header: str, missing: list[str]) -> None:
    """A file read as one column: one issue about the delimiter, not one per column."""
    issues.add(
        f"the file was read as a single column, so {len(missing)} declared columns are "
        "missing; it is probably not separated by a comma, semicolon, tab or pipe",
        None,
        expected=f"a header line such as {','.join(missing[:4])}",
        found=f"the header {header[:80]!r}",
    )


def _check_feature(issues: _Issues, f: FeatureSpec, series: pd.Series) -> None:
    if series.isna().all():
        issues.add("column is entirely missing", f.name, "at least one value", "none")
        return
    if f.type == "numeric":
        values = pd.to_numeric(series, errors="coerce")
        bad = np.flatnonzero((series.notna() & values.isna()).to_numpy())
        if bad.size:
            issues.add(
                f"{bad.size} non-numeric value(s) in a numeric column",
                f.name,
                "numbers",
                f"e.g. {series.iloc[bad[0]]!r} in {issues.where(int(bad[0]))}",
            )
        low = f.min if f.min is not None else -np.inf
        high = f.max if f.max is not None else np.inf
        out = np.flatnonzero(((values < low) | (values > high)).to_numpy())
        if out.size:
            issues.add(
                f"{out.size} value(s) out of the declared range",
                f.name,
                f"[{low}, {high}]",
                f"e.g. {values.iloc[out[0]]} in {issues.where(int(out[0]))}",
            )
    elif f.type == "binary":
        bad = np.flatnonzero((series.notna() & binary_values(series).isna()).to_numpy())
        if bad.size:
            issues.add(
                f"{bad.size} value(s) that are not binary",
                f.name,
                "0/1, true/false or yes/no",
                f"e.g. {series.iloc[bad[0]]!r} in {issues.where(int(bad[0]))}",
            )
    elif f.categories is not None:
        unknown = sorted(set(category_strings(series)) - set(f.categories))
        if unknown:
            issues.add(
                "category not in the declared list",
                f.name,
                f"one of {f.categories}",
                str(unknown[:5]),
            )


def _check_target(issues: _Issues, target: TargetSpec, labels: pd.Series) -> None:
    column = target.column
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        issues.add(
            f"{int(labels.isna().sum())} row(s) have no label",
            column,
            "a label in every row",
            f"first in {issues.where(first)}",
        )
    text = category_strings(labels)
    undeclared = text[~text.isin(list(target.class_index))]
    if not undeclared.empty:
        # Never a silent negative: every value must be one the schema declares.
        first = int(undeclared.index[0])
        issues.add(
            f"{len(undeclared)} label(s) not among the declared values",
            column,
            target.declared(),
            f"{sorted(set(undeclared))[:5]}, first {labels.iloc[first]!r} in {issues.where(first)}",
        )


def _check_survival(issues: _Issues, spec: SurvivalSpec, frame: pd.DataFrame) -> None:
    """Times present, numeric and not negative; events declared; entry before time; and a
    warning when no row at the site has the event (it then adds nothing to a Cox fit)."""
    times = _check_times(issues, frame, spec.time, "follow-up time")
    if spec.entry is not None:
        entries = _check_times(issues, frame, spec.entry, "entry time")
        if times is not None and entries is not None:
            late = np.flatnonzero((entries > times).to_numpy())
            if late.size:
                first = int(late[0])
                issues.add(
                    f"{late.size} row(s) enter after their follow-up time ends",
                    spec.entry,
                    f"{spec.entry} <= {spec.time}",
                    f"{spec.entry} {entries.iloc[first]} > {spec.time} {times.iloc[first]} "
                    f"in {issues.where(first)}",
                )
    if spec.event not in frame.columns:
        return
    events = frame[spec.event]
    if events.isna().any():
        first = int(np.flatnonzero(events.isna().to_numpy())[0])
        issues.add(
            f"{int(events.isna().sum())} row(s) have no event indicator",
            spec.event,
            spec.declared(),
            f"first in {issues.where(first)}",
        )
    text = category_strings(events)
    undeclared = text[~text.isin(list(spec.event_index))]
    if not undeclared.empty:
        # Never a silent censoring: every value must be one the schema declares.
        first = int(undeclared.index[0])
        issues.add(
            f"{len(undeclared)} event value(s) not among the declared values",
            spec.event,
            spec.declared(),
            f"{sorted(set(undeclared))[:5]}, first {events.iloc[first]!r} in {issues.where(first)}",
        )
    elif not events.isna().any() and not text.isin(spec.event_values).any():
        issues.add(
            f"all {len(events)} rows are censored (no event observed at this site): its rows "
            "still count in survival curves and risk sets, but add nothing to a log-rank "
            "test's or Cox model's events and leave its own C-index undefined",
            spec.event,
            f"at least one row with an event value {spec.event_values}",
            f"only censored values {sorted(set(text))[:5]}",
            severity="warning",
        )


def _check_times(issues: _Issues, frame: pd.DataFrame, column: str, what: str) -> pd.Series | None:
    """The column as numbers, with an issue per kind of problem; None when it is absent."""
    if column not in frame.columns:
        return None
    series = frame[column]
    values = pd.to_numeric(series, errors="coerce")
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        issues.add(
            f"{missing.size} row(s) have no {what}",
            column,
            f"a {what} (a number >= 0) in every row",
            f"first in {issues.where(int(missing[0]))}",
        )
    text = np.flatnonzero((series.notna() & values.isna()).to_numpy())
    if text.size:
        issues.add(
            f"{text.size} non-numeric {what}(s)",
            column,
            "numbers >= 0",
            f"e.g. {series.iloc[text[0]]!r} in {issues.where(int(text[0]))}",
        )
    negative = np.flatnonzero((values < 0).to_numpy())
    if negative.size:
        issues.add(
            f"{negative.size} negative {what}(s)",
            column,
            "numbers >= 0",
            f"e.g. {values.iloc[negative[0]]} in {issues.where(int(negative[0]))}",
        )
    return values
