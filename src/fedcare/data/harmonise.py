"""Harmonise features across sites without pooling rows.

Each site computes aggregates of its own training rows (counts, sums, sums of squares,
category counts). The coordinator combines them into one global encoding: category
vocabularies and normalisation statistics. Each site then encodes its own rows with that
encoding. Only the aggregates ever leave a site; the result equals what the pooled table
would give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.data.schema import TabularSchema, ValidationIssue

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass
class NumericAggregate:
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    missing: int = 0


@dataclass
class SiteAggregates:
    """What one site shares about its training rows: no row, only sums and counts."""

    site: str
    rows: int
    numeric: dict[str, NumericAggregate] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class GlobalEncoding:
    """How every site turns its table into the shared feature vector."""

    mean: dict[str, float]
    std: dict[str, float]
    vocabularies: dict[str, list[str]]
    indicators: list[str]  # numeric columns that get a "was missing" 0/1 column

    def feature_names(self, schema: TabularSchema) -> list[str]:
        names: list[str] = []
        for f in schema.features:
            if f.type == "categorical":
                names += [f"{f.name}={v}" for v in self.vocabularies[f.name]]
            else:
                names.append(f.name)
                if f.name in self.indicators:
                    names.append(f"{f.name}_missing")
        return names


def category_strings(series: pd.Series) -> pd.Series:
    """Categories compared as text, so 1, 1.0 and '1' from different files agree."""

    def norm(v: object) -> str:
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    return series.dropna().map(norm)


def binary_values(series: pd.Series) -> pd.Series:
    """0/1 floats from 0/1, true/false, yes/no (case-insensitive); NaN when unrecognised."""
    text = category_strings(series).str.lower().reindex(series.index)
    values = np.where(text.isin(_TRUE), 1.0, np.where(text.isin(_FALSE), 0.0, np.nan))
    return pd.Series(values, index=series.index, dtype=np.float64)


def site_aggregates(site: str, frame: pd.DataFrame, schema: TabularSchema) -> SiteAggregates:
    """Runs at the site, over its training rows."""
    agg = SiteAggregates(site=site, rows=len(frame))
    for f in schema.features:
        if f.name not in frame:
            continue
        if f.type == "categorical":
            agg.categories[f.name] = dict(Counter(category_strings(frame[f.name])))
            continue
        values = (
            pd.to_numeric(frame[f.name], errors="coerce")
            if f.type == "numeric"
            else binary_values(frame[f.name])
        ).to_numpy(dtype=np.float64)
        present = values[~np.isnan(values)]
        agg.numeric[f.name] = NumericAggregate(
            count=int(present.size),
            total=float(present.sum()),
            total_sq=float((present**2).sum()),
            minimum=float(present.min()) if present.size else float("inf"),
            maximum=float(present.max()) if present.size else float("-inf"),
            missing=int(np.isnan(values).sum()),
        )
    return agg


def combine(
    aggregates: Sequence[SiteAggregates], schema: TabularSchema, files: dict[str, str]
) -> tuple[GlobalEncoding, list[ValidationIssue]]:
    """Runs at the coordinator: global statistics plus cross-site issues."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    vocabularies: dict[str, list[str]] = {}
    indicators: list[str] = []
    issues: list[ValidationIssue] = []
    for f in schema.features:
        if f.type == "categorical":
            per_site = {a.site: set(a.categories.get(f.name, {})) for a in aggregates}
            union = set().union(*per_site.values())
            vocabularies[f.name] = sorted(union | set(f.categories or []))
            if len(aggregates) > 1:
                for site, values in per_site.items():
                    others = set().union(*(v for s, v in per_site.items() if s != site))
                    for value in sorted(values - others):
                        issues.append(
                            ValidationIssue(
                                "warning",
                                "category seen at this site only; the model cannot learn it from others",
                                site,
                                files.get(site, "?"),
                                f.name,
                                found=repr(value),
                            )
                        )
            continue
        parts = [a.numeric[f.name] for a in aggregates if f.name in a.numeric]
        count = sum(p.count for p in parts)
        total = sum(p.total for p in parts)
        total_sq = sum(p.total_sq for p in parts)
        mu = total / count if count else 0.0
        var = max(total_sq / count - mu * mu, 0.0) if count else 0.0
        mean[f.name] = mu
        std[f.name] = float(np.sqrt(var)) if var > 0 else 1.0
        if schema.missing_indicator and any(p.missing for p in parts):
            indicators.append(f.name)
    return GlobalEncoding(mean, std, vocabularies, indicators), issues


def encode(
    frame: pd.DataFrame, schema: TabularSchema, encoding: GlobalEncoding
) -> npt.NDArray[np.float32]:
    """Runs at the site: its rows as the shared float32 feature matrix."""
    columns: list[npt.NDArray[np.float64]] = []
    for f in schema.features:
        if f.type == "categorical":
            text = category_strings(frame[f.name]).reindex(frame.index)
            for value in encoding.vocabularies[f.name]:
                columns.append(np.asarray(text == value, dtype=np.float64))
            continue
        raw = (
            pd.to_numeric(frame[f.name], errors="coerce")
            if f.type == "numeric"
            else binary_values(frame[f.name])
        )
        values = raw.to_numpy(dtype=np.float64)
        missing = np.isnan(values)
        # Missing values are imputed with the global mean, i.e. 0 after standardisation.
        columns.append(
            np.where(missing, 0.0, (values - encoding.mean[f.name]) / encoding.std[f.name])
        )
        if f.name in encoding.indicators:
            columns.append(np.asarray(missing, dtype=np.float64))
    return np.stack(columns, axis=1).astype(np.float32)
