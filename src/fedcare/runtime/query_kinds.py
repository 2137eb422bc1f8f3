"""The analysis kinds an analysis YAML (and a query plan) may name, with their parameters.

Each kind is a pydantic model of its settings (unknown keys refused, defaults written into
the plan so its hash covers them) and the :mod:`fedcare.stats` analysis it builds. Importing
this module registers them and, through the stats modules, every site computation they ask.

=========== =================================================================
kind        what it computes
=========== =================================================================
describe    table one: mean (SD), median [IQR] on a declared grid, n (%) per level
histogram   counts on a declared grid (or one agreed from released extremes)
crosstab    counts of one or two categorical variables on declared levels
correlation Pearson correlation over complete cases
km          Kaplan-Meier curves (exact times or a declared grid), Greenwood CIs
logrank     Kaplan-Meier by a grouping, with the log-rank test across its levels
cox         Cox proportional hazards, Efron ties, exact federated Newton
cindex      Harrell's C-index per site and pooled across sites
=========== =================================================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcare.runtime.query_plan import ANALYSIS_KINDS, AnalysisKind, register_analysis_kind
from fedcare.stats.concordance import Concordance
from fedcare.stats.cox import CoxPH
from fedcare.stats.descriptive_analysis import Correlation, CrossTab, Histogram
from fedcare.stats.descriptive_tableone import TableOne
from fedcare.stats.protocol import DisclosureRules
from fedcare.stats.survival import KaplanMeier


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def exact_times(self) -> str | None:
        """What of this analysis releases exact event times (counts of one), or None.

        Such a release needs ``min_cell`` 0 or 1; under a plan's stricter rule every site
        would withhold it, so the plan is refused before any owner is asked to approve it.
        """
        return None


class DescribeParams(_Params):
    numeric: list[str] = Field(default_factory=list)
    categorical: dict[str, list[str]] = Field(default_factory=dict)  # name -> its levels
    by: str | None = None  # a grouping variable (table one's columns)
    levels: list[str] = Field(default_factory=list)  # the grouping's declared levels
    edges: dict[str, list[float]] = Field(default_factory=dict)  # histogram grid: median/IQR
    by_site: bool = False  # per-site columns too
    digits: int = Field(default=2, ge=0, le=10)


class HistogramParams(_Params):
    variable: str
    edges: list[float] | None = None
    bins: int | None = Field(default=None, ge=1)
    by: str | None = None
    levels: list[str] = Field(default_factory=list)
    by_site: bool = False


class CrossTabParams(_Params):
    row: str
    row_levels: list[str]
    col: str | None = None
    col_levels: list[str] = Field(default_factory=list)
    by_site: bool = False


class CorrelationParams(_Params):
    variables: list[str] = Field(min_length=2)


class KMParams(_Params):
    mode: Literal["exact", "grid"] = "exact"  # exact event times, or counts on `grid`
    grid: list[float] = Field(default_factory=list)
    group: str | None = None
    levels: list[str] = Field(default_factory=list)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    at_risk_times: list[float] = Field(default_factory=list)

    def exact_times(self) -> str | None:
        return (
            "mode: exact (give mode: grid with a grid of times)" if self.mode == "exact" else None
        )


class LogRankParams(KMParams):
    group: str  # required: the test compares its levels

    @model_validator(mode="after")
    def _two_levels(self) -> LogRankParams:
        if len(self.levels) < 2:
            raise ValueError(f"a log-rank test needs at least two 'levels' of '{self.group}'")
        return self


class CoxParams(_Params):
    covariates: list[str] = Field(min_length=1)
    strata: str | None = None  # None, "site" (a baseline hazard per site) or a column
    levels: list[str] = Field(default_factory=list)  # the strata column's levels
    penalizer: float = Field(default=0.0, ge=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    tolerance: float = Field(default=1e-9, gt=0)
    max_iterations: int = Field(default=25, ge=1, le=200)

    def exact_times(self) -> str | None:
        if self.strata == "site":
            return None
        return "pooled risk sets (give strata: site for a baseline hazard per site)"


class CIndexParams(_Params):
    covariates: list[str] = Field(default_factory=list)
    coef: list[float] = Field(default_factory=list)
    risk: str | None = None  # a risk-score column the sites hold, instead of covariates
    pooled: bool = True  # also the C-index over all sites' pairs (reveals event times)

    def exact_times(self) -> str | None:
        return "the pooled C-index (give pooled: false for per-site ones)" if self.pooled else None


def _km(id: str, p: KMParams, _: DisclosureRules) -> KaplanMeier:
    return KaplanMeier(
        id=id,
        mode=p.mode,
        grid=tuple(p.grid),
        group=p.group,
        levels=tuple(p.levels),
        alpha=p.alpha,
        at_risk_times=tuple(p.at_risk_times),
    )


KINDS = (
    AnalysisKind(
        "describe",
        "Table one",
        DescribeParams,
        lambda id, p, _: TableOne(
            id,
            numeric=p.numeric,
            categorical=p.categorical,
            by=p.by,
            levels=p.levels,
            edges=p.edges,
            by_site=p.by_site,
            digits=p.digits,
        ),
    ),
    AnalysisKind(
        "histogram",
        "Histogram",
        HistogramParams,
        lambda id, p, rules: Histogram(
            id,
            p.variable,
            edges=p.edges,
            bins=p.bins,
            by=p.by,
            levels=p.levels,
            by_site=p.by_site,
            rules=rules,
        ),
    ),
    AnalysisKind(
        "crosstab",
        "Cross-tabulation",
        CrossTabParams,
        lambda id, p, _: CrossTab(id, p.row, p.row_levels, p.col, p.col_levels, by_site=p.by_site),
    ),
    AnalysisKind(
        "correlation",
        "Correlation (complete cases)",
        CorrelationParams,
        lambda id, p, _: Correlation(id, p.variables),
    ),
    AnalysisKind("km", "Kaplan-Meier", KMParams, _km),
    AnalysisKind("logrank", "Log-rank test", LogRankParams, _km),
    AnalysisKind(
        "cox",
        "Cox proportional hazards",
        CoxParams,
        lambda id, p, _: CoxPH(
            id=id,
            covariates=tuple(p.covariates),
            strata=p.strata,
            levels=tuple(p.levels),
            penalizer=p.penalizer,
            alpha=p.alpha,
            tolerance=p.tolerance,
            max_iterations=p.max_iterations,
        ),
    ),
    AnalysisKind(
        "cindex",
        "C-index",
        CIndexParams,
        lambda id, p, _: Concordance(
            id=id,
            covariates=tuple(p.covariates),
            coef=tuple(p.coef),
            risk=p.risk,
            pooled=p.pooled,
        ),
    ),
)


def register_builtin() -> None:
    """Register the built-in kinds (once; a kind a plug-in registered first is kept)."""
    for kind in KINDS:
        if kind.name not in ANALYSIS_KINDS:
            register_analysis_kind(kind)


def builtin_names() -> list[str]:
    return [kind.name for kind in KINDS]


register_builtin()
