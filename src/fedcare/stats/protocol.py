"""A federated analysis as a conversation of questions and releases.

An :class:`Analysis` (Kaplan-Meier, a Cox fit, a table one, ...) runs at the coordinator as
a small state machine: :meth:`Analysis.start` gives the first :class:`Step`, and
:meth:`Analysis.advance` takes the combined answers to that step's question and gives the
next step or the :class:`AnalysisResult`. A step's ``memo`` is the analysis's whole state
(JSON-able), so a query can be checkpointed and resumed between steps like a training run.

At a site, a question names a registered computation (:data:`SITE_COMPUTATIONS`) and its
parameters; the site runs it on its own rows under its own :class:`DisclosureRules` and
releases named arrays. Nothing else runs at a site: the coordinator cannot send code, and a
deployed site first checks with :meth:`Analysis.permits` that the question is one the
approved plan asks.

How answers combine is the question's ``combine``:

- ``"sum"``: only the element-wise total over sites is needed (counts, sums, score vectors,
  information matrices); this is what a secure sum (SecAgg, CKKS) can carry, so the
  coordinator then sees only totals;
- ``"per_site"``: each site's release is kept separately (per-site rows of a table one,
  per-site C-index); never through a secure sum.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

Combine = Literal["sum", "per_site"]
Values = dict[str, npt.NDArray[np.float64]]
"""A release's named arrays (float64; shapes fixed by the question, never by a site's rows
for a ``sum`` question, so totals line up)."""


@dataclass(frozen=True)
class DisclosureRules:
    """What a site lets leave it. The plan proposes; a site's own rules can only be stricter.

    ``min_cell``: a count (or a statistic computed from fewer rows) below this is suppressed
    before release; ``release_extremes``: whether min/max may leave the site at all.
    """

    min_cell: int = 5
    release_extremes: bool = False

    def stricter(self, other: DisclosureRules) -> DisclosureRules:
        """The rules that satisfy both (a site combines the plan's with its own)."""
        return DisclosureRules(
            min_cell=max(self.min_cell, other.min_cell),
            release_extremes=self.release_extremes and other.release_extremes,
        )


@dataclass(frozen=True)
class SiteTable:
    """One site's rows for analysis, in the units its schema declares.

    ``frame``: one row per patient (numeric columns as float with NaN for missing,
    categorical columns as text); ``time``/``event``/``entry``: the names of the survival
    roles, when the schema declares them; ``source``: the file, for error messages.
    """

    site: str
    frame: pd.DataFrame
    time: str | None = None
    event: str | None = None
    entry: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Question:
    """One request to every site: run computation ``step`` with ``params``.

    ``analysis``: the id of the analysis in the plan that asks it (audit, routing);
    ``params`` is JSON-able and canonical (the same question hashes the same everywhere).
    """

    analysis: str
    step: str
    params: Mapping[str, Any]
    combine: Combine


@dataclass(frozen=True)
class Release:
    """What one site lets leave it for one question.

    ``suppressed``: human-readable lines saying what was withheld and why (they go to the
    report and the audit log); ``sensitivity``: for values that may be noised, the most one
    patient can change each value (L1 and L2 over the whole array), keyed like ``values``.
    """

    values: Values
    suppressed: tuple[str, ...] = ()
    sensitivity: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Combined:
    """The answers to one question: ``total`` for a sum, ``per_site`` for the other kind.

    ``suppressed`` gathers every site's suppression lines (prefixed with the site).
    """

    total: Values | None = None
    per_site: Mapping[str, Values] | None = None
    suppressed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """An analysis between two questions: the next question and the state so far."""

    question: Question
    memo: Mapping[str, Any]  # JSON-able


@dataclass(frozen=True)
class AnalysisResult:
    """What an analysis found: ``tables`` of numbers for metrics.json and the report,
    ``notes`` (what was suppressed or noised and why), ``kind`` for the report's section."""

    analysis: str
    kind: str
    tables: Mapping[str, Any]
    notes: tuple[str, ...] = ()


class Analysis(ABC):
    """The coordinator side of one analysis; deterministic and free of I/O."""

    id: str

    @abstractmethod
    def start(self) -> Step:
        """The first question."""

    @abstractmethod
    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        """Given the combined answers to ``step.question``: the next step or the result."""

    @abstractmethod
    def permits(self, question: Question) -> bool:
        """Whether ``question`` is one this analysis asks (a site's check against its plan)."""


SiteComputation = Callable[[Mapping[str, Any], SiteTable, DisclosureRules], Release]

SITE_COMPUTATIONS: dict[str, SiteComputation] = {}
"""Every computation a site will run, by the name a :class:`Question` gives as ``step``."""


def site_computation(name: str) -> Callable[[SiteComputation], SiteComputation]:
    """Register a site computation under ``name`` (once)."""

    def register(fn: SiteComputation) -> SiteComputation:
        if name in SITE_COMPUTATIONS:
            raise ValueError(f"site computation '{name}' is registered twice")
        SITE_COMPUTATIONS[name] = fn
        return fn

    return register


def answer(question: Question, table: SiteTable, rules: DisclosureRules) -> Release:
    """Run ``question`` at one site under ``rules``; an unknown computation is refused."""
    try:
        compute = SITE_COMPUTATIONS[question.step]
    except KeyError:
        known = ", ".join(sorted(SITE_COMPUTATIONS)) or "none"
        raise ValueError(
            f"site {table.site}: question '{question.step}' (analysis '{question.analysis}') "
            f"is not a computation this site runs; known: {known}"
        ) from None
    return compute(question.params, table, rules)


def combine(question: Question, releases: Mapping[str, Release]) -> Combined:
    """Combine in the clear (the simulator, or a deployment without a secure sum).

    A ``sum`` question's arrays must have the same keys and shapes at every site.
    """
    notes = tuple(f"{site}: {line}" for site, r in releases.items() for line in r.suppressed)
    if question.combine == "per_site":
        return Combined(per_site={s: dict(r.values) for s, r in releases.items()}, suppressed=notes)
    total: Values = {}
    first: str | None = None
    for site, release in releases.items():
        if first is None:
            first = site
            total = {k: np.array(v, dtype=np.float64, copy=True) for k, v in release.values.items()}
            continue
        if set(release.values) != set(total):
            raise ValueError(
                f"question '{question.step}': site {site} released {sorted(release.values)}, "
                f"site {first} released {sorted(total)}"
            )
        for key, value in release.values.items():
            if np.shape(value) != total[key].shape:
                raise ValueError(
                    f"question '{question.step}': '{key}' has shape {np.shape(value)} at site "
                    f"{site} but {total[key].shape} at site {first}"
                )
            total[key] += value
    return Combined(total=total, suppressed=notes)


def run_in_process(
    analysis: Analysis,
    tables: Mapping[str, SiteTable],
    rules: Mapping[str, DisclosureRules] | DisclosureRules,
) -> AnalysisResult:
    """Drive ``analysis`` to its result over in-memory site tables (no secure sum, no noise).

    The simulator's reference driver; a deployed query asks the same questions over the wire.
    """
    step_or_result: Step | AnalysisResult = analysis.start()
    while isinstance(step_or_result, Step):
        step = step_or_result
        releases = {
            site: answer(
                step.question,
                table,
                rules[site] if isinstance(rules, Mapping) else rules,
            )
            for site, table in tables.items()
        }
        step_or_result = analysis.advance(step, combine(step.question, releases))
    return step_or_result
