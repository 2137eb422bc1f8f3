"""A small two-step analysis for the query job's tests: the pooled mean and variance of
one column, from per-site sums (step 1: n and sum; step 2: the sum of squared deviations
from the pooled mean, which the coordinator sends back). Sites holding fewer rows than
their minimum cell release nothing and say so.

It exercises everything the real analyses need from the query machinery (a memo carried
between steps, a parameter chosen by the coordinator, suppression) with no dependency on
them. ``moments_kind`` registers it as the analysis kind ``moments``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, ConfigDict

from fedcare.runtime.query_plan import (
    AnalysisKind,
    register_analysis_kind,
    unregister_analysis_kind,
)
from fedcare.stats.protocol import (
    SITE_COMPUTATIONS,
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


def _values(table: SiteTable, column: str) -> np.ndarray:
    return table.frame[column].dropna().to_numpy(dtype=np.float64)


def _sums(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    x = _values(table, str(params["column"]))
    if len(x) < rules.min_cell:
        line = f"{params['column']}: {len(x)} rows < min cell {rules.min_cell}; nothing released"
        return Release({"n": np.zeros(1), "sum": np.zeros(1)}, suppressed=(line,))
    return Release({"n": np.array([float(len(x))]), "sum": np.array([x.sum()])})


def _squares(params: Mapping[str, Any], table: SiteTable, rules: DisclosureRules) -> Release:
    x = _values(table, str(params["column"]))
    if len(x) < rules.min_cell:
        return Release({"ss": np.zeros(1)}, suppressed=(f"{params['column']}: suppressed",))
    return Release({"ss": np.array([((x - float(params["mean"])) ** 2).sum()])})


if "test_sums" not in SITE_COMPUTATIONS:  # the module may be imported under two names
    site_computation("test_sums")(_sums)
    site_computation("test_squares")(_squares)


class MomentsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str


class Moments(Analysis):
    def __init__(self, id: str, column: str) -> None:
        self.id = id
        self.column = column

    def start(self) -> Step:
        question = Question(self.id, "test_sums", {"column": self.column}, "sum")
        return Step(question, {})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        assert combined.total is not None
        if step.question.step == "test_sums":
            n, total = float(combined.total["n"][0]), float(combined.total["sum"][0])
            mean = total / n
            question = Question(
                self.id, "test_squares", {"column": self.column, "mean": mean}, "sum"
            )
            return Step(question, {"n": n, "mean": mean})
        n, mean = float(step.memo["n"]), float(step.memo["mean"])
        variance = float(combined.total["ss"][0]) / (n - 1)
        tables = {"summary": {"n": n, "mean": mean, "variance": variance}}
        return AnalysisResult(self.id, "moments", tables, notes=combined.suppressed)

    def permits(self, question: Question) -> bool:
        if question.analysis != self.id or question.params.get("column") != self.column:
            return False
        if question.step == "test_sums":
            return set(question.params) == {"column"}
        return question.step == "test_squares" and set(question.params) == {"column", "mean"}


MOMENTS = AnalysisKind(
    name="moments",
    title="Mean and variance",
    params=MomentsParams,
    build=lambda id, p, _rules: Moments(id, p.column),
)


@pytest.fixture
def moments_kind() -> Iterator[AnalysisKind]:
    """The ``moments`` kind registered for one test."""
    register_analysis_kind(MOMENTS)
    yield MOMENTS
    unregister_analysis_kind(MOMENTS.name)


def tables(sizes: Mapping[str, int], seed: int = 0) -> dict[str, SiteTable]:
    """Site tables with an ``age`` column (a few missing) of the given sizes."""
    rng = np.random.default_rng(seed)
    out = {}
    for site, n in sizes.items():
        age = rng.normal(60, 10, n).round(1)
        age[rng.random(n) < 0.1] = np.nan
        out[site] = SiteTable(site, pd.DataFrame({"age": age}), source=f"{site}.csv")
    return out
