"""The checks one site's table must pass before any training, each reported, none raised.

Every issue names the site, the file and the column, what was expected and an example of
what was found, so the engineer at that hospital can fix it without seeing other sites.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedcare.data.harmonise import binary_values, category_strings
from fedcare.data.schema import FeatureSpec, TabularSchema, ValidationIssue, category_text


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
    ) -> None:
        self.items.append(
            ValidationIssue("error", problem, self.site, self.file, column, expected, found)
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
    needed = [schema.target.column] + [f.name for f in schema.features if f.required]
    if schema.split_column:
        needed.append(schema.split_column)
    for column in needed:
        if column not in frame.columns:
            issues.add(
                "missing column",
                column,
                expected="a column of that name",
                found=f"columns {[str(c) for c in frame.columns][:12]}",
            )
    for feature in schema.features:
        if feature.name in frame.columns:
            _check_feature(issues, feature, frame[feature.name])
    if schema.target.column in frame.columns:
        _check_target(issues, schema, frame[schema.target.column])
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


def _check_target(issues: _Issues, schema: TabularSchema, labels: pd.Series) -> None:
    column = schema.target.column
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        issues.add(
            f"{int(labels.isna().sum())} row(s) have no label",
            column,
            "a label in every row",
            f"first in {issues.where(first)}",
        )
    present = set(category_strings(labels))
    if schema.target.classes is not None:
        declared = [category_text(c) for c in schema.target.classes]
        unknown = sorted(present - set(declared))
        if unknown:
            issues.add(
                "label not among the declared classes",
                column,
                f"one of {declared}",
                str(unknown[:5]),
            )
        distinct = len(present & set(declared))
    else:
        positive = {category_text(v) for v in schema.target.positive or []}
        distinct = len({value in positive for value in present})
    if present and distinct < 2:
        issues.add(
            "the label has only one class at this site",
            column,
            "at least two classes",
            f"only {sorted(present)[:3]}",
        )
