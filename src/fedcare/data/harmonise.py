"""Harmonise features across sites without pooling rows.

Three pure steps, split where the deployed system splits them:

1. ``site_aggregates`` runs at each hospital over its training rows and returns counts,
   sums, sums of squares, min/max and category counts: no row leaves the site.
2. ``combine`` runs at the coordinator and turns all sites' aggregates into one
   ``GlobalEncoding``: sorted category vocabularies and global mean/std per column.
3. ``encode`` runs at each hospital and turns its own rows into the shared feature matrix.

Because sums and counts add up, the result equals what the pooled table would give.
Aggregates and encodings convert to plain JSON-safe dicts to travel between the two.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.core.errors import ConfigError
from fedcare.data.schema import FeatureSpec, TabularSchema, ValidationIssue, category_text

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass
class NumericAggregate:
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float | None = None  # None when the site has no value in this column
    maximum: float | None = None
    missing: int = 0


@dataclass
class SiteAggregates:
    """What one site shares about its training rows: no row, only sums and counts."""

    site: str
    rows: int
    numeric: dict[str, NumericAggregate] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SiteAggregates:
        return cls(
            site=str(raw["site"]),
            rows=int(raw["rows"]),
            numeric={k: NumericAggregate(**v) for k, v in raw.get("numeric", {}).items()},
            categories={
                k: {str(c): int(n) for c, n in v.items()}
                for k, v in raw.get("categories", {}).items()
            },
        )


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GlobalEncoding:
        return cls(
            mean={k: float(v) for k, v in raw["mean"].items()},
            std={k: float(v) for k, v in raw["std"].items()},
            vocabularies={k: [str(c) for c in v] for k, v in raw["vocabularies"].items()},
            indicators=[str(c) for c in raw["indicators"]],
        )


def category_strings(series: pd.Series) -> pd.Series:
    """Non-missing values as category text (see ``category_text``), index kept."""
    return series.dropna().map(category_text)


def binary_values(series: pd.Series) -> pd.Series:
    """0/1 floats from 0/1, true/false, yes/no (case-insensitive); NaN when unrecognised."""
    text = category_strings(series).map(str.lower).reindex(series.index)
    values = np.where(text.isin(_TRUE), 1.0, np.where(text.isin(_FALSE), 0.0, np.nan))
    return pd.Series(values, index=series.index, dtype=np.float64)


def numeric_values(frame: pd.DataFrame, feature: FeatureSpec) -> npt.NDArray[np.float64]:
    """A numeric or binary column as floats, NaN where missing (or absent: optional column)."""
    if feature.name not in frame:
        return np.full(len(frame), np.nan)
    series = frame[feature.name]
    if feature.type == "binary":
        return binary_values(series).to_numpy(dtype=np.float64)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


def site_aggregates(site: str, frame: pd.DataFrame, schema: TabularSchema) -> SiteAggregates:
    """Runs at the site, over its training rows."""
    agg = SiteAggregates(site=site, rows=len(frame))
    for f in schema.features:
        if f.name not in frame:
            continue
        if f.type == "categorical":
            counts = Counter(category_strings(frame[f.name]))
            agg.categories[f.name] = {k: int(v) for k, v in sorted(counts.items())}
            continue
        values = numeric_values(frame, f)
        present = values[~np.isnan(values)]
        agg.numeric[f.name] = NumericAggregate(
            count=int(present.size),
            total=float(present.sum()),
            total_sq=float((present**2).sum()),
            minimum=float(present.min()) if present.size else None,
            maximum=float(present.max()) if present.size else None,
            missing=int(values.size - present.size),
        )
    return agg


def combine(aggregates: Sequence[SiteAggregates], schema: TabularSchema) -> GlobalEncoding:
    """Runs at the coordinator: global vocabularies and normalisation statistics."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    vocabularies: dict[str, list[str]] = {}
    indicators: list[str] = []
    for f in schema.features:
        if f.type == "categorical":
            seen = {v for a in aggregates for v in a.categories.get(f.name, {})}
            # Declared categories get a column even if no site has them yet, so the
            # feature space does not change when a new site joins.
            vocabularies[f.name] = sorted(seen | set(f.categories or []))
            continue
        parts = [a.numeric[f.name] for a in aggregates if f.name in a.numeric]
        count = sum(p.count for p in parts)
        mu = sum(p.total for p in parts) / count if count else 0.0
        var = max(sum(p.total_sq for p in parts) / count - mu * mu, 0.0) if count else 0.0
        mean[f.name] = mu
        # A constant column becomes 0 rather than NaN.
        std[f.name] = math.sqrt(var) if var > 0 else 1.0
        if schema.missing_indicator and any(p.missing for p in parts):
            indicators.append(f.name)
    return GlobalEncoding(mean, std, vocabularies, indicators)


def site_only_categories(
    aggregates: Sequence[SiteAggregates], schema: TabularSchema, files: Mapping[str, str]
) -> list[ValidationIssue]:
    """Categories seen at exactly one site: no other site can teach the model about them."""
    issues: list[ValidationIssue] = []
    if len(aggregates) < 2:
        return issues
    for f in schema.features:
        if f.type != "categorical":
            continue
        per_site = {a.site: set(a.categories.get(f.name, {})) for a in aggregates}
        for site, values in per_site.items():
            others = set().union(*(v for s, v in per_site.items() if s != site))
            for value in sorted(values - others):
                issues.append(
                    ValidationIssue(
                        "warning",
                        "category seen at this site only; no other site has it",
                        site,
                        files.get(site, "?"),
                        f.name,
                        found=repr(value),
                    )
                )
    return issues


def encode(
    frame: pd.DataFrame, schema: TabularSchema, encoding: GlobalEncoding
) -> npt.NDArray[np.float32]:
    """Runs at the site: its rows as the shared float32 feature matrix."""
    columns: list[npt.NDArray[np.float64]] = []
    for f in schema.features:
        if f.type == "categorical":
            # A missing (or absent optional) category is all zeros: no level asserted.
            text = (
                category_strings(frame[f.name]).reindex(frame.index)
                if f.name in frame
                else pd.Series(np.nan, index=frame.index, dtype=object)
            )
            for value in encoding.vocabularies[f.name]:
                columns.append(np.asarray(text == value, dtype=np.float64))
            continue
        values = numeric_values(frame, f)
        missing = np.isnan(values)
        # Missing values are imputed with the global mean, i.e. 0 after standardisation.
        columns.append(
            np.where(missing, 0.0, (values - encoding.mean[f.name]) / encoding.std[f.name])
        )
        if f.name in encoding.indicators:
            columns.append(missing.astype(np.float64))
    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32)


def fixed_encoding(schema: TabularSchema) -> tuple[dict[str, list[str]], list[str]]:
    """The feature space a schema fixes on its own: (vocabularies, indicator columns).

    For sites that never exchange anything about their rows (each normalises with its own
    statistics) every categorical feature must declare its categories, and with
    ``missing_indicator`` every numeric or binary feature gets its "was missing" column, so
    all sites build the same columns in the same order whatever their own rows hold.
    """
    undeclared = [f.name for f in schema.features if f.type == "categorical" and not f.categories]
    if undeclared:
        raise ConfigError(
            f"schema: categorical feature(s) {undeclared} declare no 'categories'; with "
            "per-site normalisation every site one-hot encodes the declared list, so declare it"
        )
    vocabularies = {
        f.name: sorted(f.categories or []) for f in schema.features if f.type == "categorical"
    }
    indicators = (
        [f.name for f in schema.features if f.type != "categorical"]
        if schema.missing_indicator
        else []
    )
    return vocabularies, indicators


def site_encoding(site: str, train: pd.DataFrame, schema: TabularSchema) -> GlobalEncoding:
    """Runs at the site: the schema's fixed feature space, z-scored with its own training rows.

    Nothing about the rows leaves the site; the price is that a feature's scale means
    "relative to this hospital" (FLamby's convention for the heart data).
    """
    vocabularies, indicators = fixed_encoding(schema)
    own = combine([site_aggregates(site, train, schema)], schema)
    return GlobalEncoding(own.mean, own.std, vocabularies, indicators)
