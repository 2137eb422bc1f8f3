"""A query job's progress: which analysis, which question, the results so far.

:class:`QueryRun` walks a plan's analyses one after another through their steps
(:class:`~fedcare.stats.protocol.Analysis` ``start``/``advance``). The simulator and the
deployed coordinator drive the same object: ask :attr:`QueryRun.question`, gather every
site's release, combine, :meth:`QueryRun.advance`. Its :meth:`QueryRun.memo` is plain JSON
(the analysis index, the pending question and the analysis's own step memo, and every
finished result), so a coordinator checkpoints it after each step and a restarted one
continues from the step it was on, asking no question twice that had been answered.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.runtime.query_plan import QueryPlan
from fedcare.stats.protocol import (
    Analysis,
    AnalysisResult,
    Combined,
    Question,
    Release,
    Step,
)

MEMO_VERSION = 1


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: arrays and numpy scalars as lists and numbers, tuples as
    lists, non-finite floats as None (JSON has no NaN; the report shows a dash)."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON data")


def result_record(result: AnalysisResult, kind: str) -> dict[str, Any]:
    """An analysis result as metrics.json and the checkpoint keep it."""
    return {
        "id": result.analysis,
        "kind": kind,
        "result_kind": result.kind,
        "tables": jsonable(dict(result.tables)),
        "notes": list(result.notes),
    }


def question_record(question: Question) -> dict[str, Any]:
    return {
        "analysis": question.analysis,
        "step": question.step,
        "params": jsonable(dict(question.params)),
        "combine": question.combine,
    }


def question_from_record(raw: Mapping[str, Any]) -> Question:
    combine = raw["combine"]
    if combine not in ("sum", "per_site"):
        raise ConfigError(f"query memo: 'combine' must be sum or per_site, found {combine!r}")
    return Question(
        analysis=str(raw["analysis"]),
        step=str(raw["step"]),
        params=dict(raw["params"]),
        combine=combine,
    )


@dataclass(frozen=True)
class ReleaseRecord:
    """What one site released for one question: the names and shapes of its arrays and
    what it withheld (the audit log's and the report's line per release)."""

    analysis: str
    step: str
    index: int  # the question's position in the whole query (0, 1, ...)
    site: str
    shapes: Mapping[str, tuple[int, ...]]
    suppressed: tuple[str, ...] = ()
    noise: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "analysis": self.analysis,
            "step": self.step,
            "question": self.index,
            "site": self.site,
            "values": {k: list(v) for k, v in self.shapes.items()},
            "suppressed": list(self.suppressed),
            "noise": list(self.noise),
        }


def values_digest(values: Mapping[str, Any]) -> str:
    """SHA-256 of a release's arrays (names, shapes, values as little-endian float64): what
    the site's release log and the coordinator's audit log both record, so the two can be
    compared without either keeping the numbers. Counts are exact in float64 (< 2**53)."""
    digest = hashlib.sha256()
    for name in sorted(values):
        array = np.asarray(values[name])
        digest.update(f"{name}:{list(array.shape)};".encode())
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()


NOISED = "noised "  # how a release's noise line begins (stats.noise.SiteNoise.apply)


def split_noise(release: Release) -> tuple[Release, tuple[str, ...]]:
    """The release with only its withheld lines, and its noise lines apart (what was
    noised is reported per release; the analysis notes say what was withheld)."""
    noise = tuple(x for x in release.suppressed if x.startswith(NOISED))
    withheld = tuple(x for x in release.suppressed if not x.startswith(NOISED))
    return replace(release, suppressed=withheld), noise


def release_record(question: Question, index: int, site: str, release: Release) -> ReleaseRecord:
    """What ``site`` released for question ``index`` (withheld and noise lines apart)."""
    kept, noise = split_noise(release)
    return ReleaseRecord(
        analysis=question.analysis,
        step=question.step,
        index=index,
        site=site,
        shapes={k: tuple(np.shape(v)) for k, v in release.values.items()},
        suppressed=tuple(kept.suppressed),
        noise=noise,
    )


@dataclass
class QueryRun:
    """The coordinator side of one query job (no I/O): the pending question, the results.

    ``asked`` counts the questions answered so far; it numbers each question, so a release
    is matched to the question it answers and a replayed one is refused.
    """

    plan: QueryPlan
    analyses: list[Analysis]
    index: int = 0  # the analysis in progress (len(analyses) when done)
    step: Step | None = None
    asked: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, plan: QueryPlan) -> QueryRun:
        run = cls(plan, plan.build())
        run._begin()
        return run

    @property
    def done(self) -> bool:
        return self.index >= len(self.analyses)

    @property
    def question(self) -> Question | None:
        """The question every site is to answer now (None once the query is done)."""
        return None if self.step is None else self.step.question

    def _begin(self) -> None:
        """The first question of the analysis at ``index`` (none once all are done)."""
        self.step = None if self.done else self.analyses[self.index].start()

    def advance(self, combined: Combined) -> AnalysisResult | None:
        """Take the combined answers to :attr:`question`; the finished result, if any."""
        if self.step is None:
            raise ConfigError("query: every analysis has finished; there is no question to answer")
        analysis = self.analyses[self.index]
        self.suppressed.extend(f"{analysis.id}: {line}" for line in combined.suppressed)
        self.asked += 1
        following = analysis.advance(self.step, combined)
        if isinstance(following, Step):
            self.step = following
            return None
        kind = self.plan.analyses[self.index].kind
        self.results.append(result_record(following, kind))
        self.index += 1
        self._begin()
        return following

    def memo(self) -> dict[str, Any]:
        """The whole progress as JSON data (what a checkpoint keeps)."""
        return {
            "version": MEMO_VERSION,
            "plan": self.plan.hash,
            "index": self.index,
            "asked": self.asked,
            "step": None
            if self.step is None
            else {
                "question": question_record(self.step.question),
                "memo": jsonable(self.step.memo),
            },
            "results": self.results,
            "suppressed": self.suppressed,
        }

    @classmethod
    def restore(cls, plan: QueryPlan, memo: Mapping[str, Any]) -> QueryRun:
        """The run a :meth:`memo` was taken from; refused for another plan or version."""
        if memo.get("version") != MEMO_VERSION:
            raise ConfigError(
                f"query checkpoint: version {memo.get('version')!r}, expected {MEMO_VERSION}"
            )
        if memo.get("plan") != plan.hash:
            raise ConfigError(
                f"query checkpoint: taken for plan {memo.get('plan')!r}, not this plan {plan.hash}"
            )
        step = memo["step"]
        return cls(
            plan,
            plan.build(),
            index=int(memo["index"]),
            step=None
            if step is None
            else Step(question_from_record(step["question"]), dict(step["memo"])),
            asked=int(memo["asked"]),
            results=list(memo["results"]),
            suppressed=list(memo["suppressed"]),
        )
