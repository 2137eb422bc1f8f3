"""What a deployed or simulated ``query`` job asks, as the data owners approve it.

A :class:`QueryPlan` names the dataset and split, every analysis in order (its kind, id and
parameters), the disclosure rules the plan proposes, the optional noise and the secure sum.
Its hash (:func:`~fedcare.runtime.approvals.plan_hash` of its canonical JSON) is what an
owner approves, exactly like a training plan's; a site then answers only questions one of
the plan's analyses asks (:meth:`QueryPlan.permits`).

Analyses are built by kind from :data:`ANALYSIS_KINDS`: each kind declares a pydantic model
of its parameters (unknown keys refused) and a factory. Both the coordinator and every site
build the same analysis objects from the same plan, so a site can check a question without
trusting the coordinator's word for what the plan means.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from fedcare import __version__
from fedcare.core.errors import ConfigError
from fedcare.runtime.approvals import canonical, plan_hash
from fedcare.stats.protocol import Analysis, DisclosureRules, Question

Split = Literal["train", "test", "all"]
Secure = Literal["none", "secagg", "ckks"]
SPLITS: tuple[str, ...] = ("train", "test", "all")
SECURE: tuple[str, ...] = ("none", "secagg", "ckks")
QUERY_JOB = "query"  # the job kind on the wire and in the plan


@dataclass(frozen=True)
class AnalysisKind:
    """A kind of analysis a plan may name: ``params`` validates its settings, ``build``
    makes the coordinator-side state machine from an id, those settings and the plan's
    disclosure rules (a histogram without a declared grid needs released extremes)."""

    name: str
    title: str
    params: type[BaseModel]
    build: Callable[[str, Any, DisclosureRules], Analysis]


ANALYSIS_KINDS: dict[str, AnalysisKind] = {}
"""Every analysis kind a plan may name (``describe``, ``km``, ``cox``, ...)."""


def register_analysis_kind(kind: AnalysisKind) -> AnalysisKind:
    """Add ``kind`` to :data:`ANALYSIS_KINDS` (once)."""
    if kind.name in ANALYSIS_KINDS:
        raise ValueError(f"analysis kind '{kind.name}' is registered twice")
    ANALYSIS_KINDS[kind.name] = kind
    return kind


def unregister_analysis_kind(name: str) -> None:
    """Withdraw a kind (tests and plug-ins that registered one)."""
    del ANALYSIS_KINDS[name]


def _builtin() -> None:
    # Imported on first use: the built-in kinds import every stats analysis.
    import fedcare.runtime.query_kinds  # noqa: F401


def analysis_kind(name: str, where: str) -> AnalysisKind:
    """The kind called ``name``, or a ConfigError naming ``where`` and the known kinds."""
    _builtin()
    found = ANALYSIS_KINDS.get(name)
    if found is None:
        close = difflib.get_close_matches(name, list(ANALYSIS_KINDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(sorted(ANALYSIS_KINDS)) or "none registered"
        raise ConfigError(f"{where}: unknown analysis kind '{name}'{hint} (known: {known})")
    return found


def check_params(kind: AnalysisKind, params: Mapping[str, Any], where: str) -> BaseModel:
    """``params`` validated by the kind's model; every problem named with its key."""
    try:
        return kind.params.model_validate(dict(params))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err.get("loc", ()))
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                allowed = ", ".join(sorted(kind.params.model_fields)) or "none"
                message = f"unknown key (allowed: {allowed})"
            problems.append(f"'{key}': {message}" if key else message)
        raise ConfigError(f"{where} ({kind.name}): " + "; ".join(problems)) from None


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis of a plan: its ``id`` (unique in the plan), ``kind`` and parameters
    (as validated and written out by the kind's model, so defaults are in the hash)."""

    id: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self, rules: DisclosureRules) -> Analysis:
        """The analysis under the plan's ``rules``; its own refusals name it."""
        where = f"analysis '{self.id}'"
        kind = analysis_kind(self.kind, where)
        params = check_params(kind, self.params, where)
        try:
            analysis = kind.build(self.id, params, rules)
        except ConfigError as exc:
            raise ConfigError(f"{where} ({self.kind}): {exc}") from None
        except ValueError as exc:  # the stats analyses check their own settings
            raise ConfigError(f"{where} ({self.kind}): {exc}") from None
        if analysis.id != self.id:
            raise ConfigError(
                f"analysis kind '{self.kind}' built an analysis with id '{analysis.id}' for "
                f"'{self.id}'"
            )
        return analysis

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "params": canonical(dict(self.params))}


@dataclass(frozen=True)
class NoisePlan:
    """Differential privacy on every noisable released value: ``mechanism`` with
    ``epsilon`` (and ``delta`` for Gaussian) per release, charged to each site's budget."""

    mechanism: Literal["laplace", "gaussian"]
    epsilon: float
    delta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.delta}


@dataclass(frozen=True)
class QueryPlan:
    """A query job: the analyses run over every site's rows of ``split``, in order."""

    name: str
    dataset: str
    sites: tuple[str, ...]
    analyses: tuple[AnalysisSpec, ...]
    split: Split = "all"
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    rules: DisclosureRules = field(default_factory=DisclosureRules)
    noise: NoisePlan | None = None
    secure: Secure = "none"
    code: str = __version__

    def __post_init__(self) -> None:
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"query plan: 'sites' must list distinct sites, found {self.sites}")
        if not self.analyses:
            raise ConfigError("query plan: 'analyses' lists nothing to compute")
        ids = [a.id for a in self.analyses]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"query plan: analysis ids must be unique; repeated: {dupes}")
        if self.split not in SPLITS:
            raise ConfigError(f"query plan: 'split' must be one of {SPLITS}, found {self.split!r}")
        if self.secure not in SECURE:
            raise ConfigError(
                f"query plan: 'secure' must be one of {SECURE}, found {self.secure!r}"
            )
        if self.rules.min_cell < 1:
            raise ConfigError(f"query plan: 'min_cell' must be >= 1, found {self.rules.min_cell}")

    def build(self) -> list[Analysis]:
        """Every analysis of the plan as its coordinator-side state machine, in order."""
        return [spec.build(self.rules) for spec in self.analyses]

    def permits(self, question: Question, analyses: list[Analysis] | None = None) -> bool:
        """Whether ``question`` is one the plan's analysis it names would ask."""
        for analysis in analyses if analyses is not None else self.build():
            if analysis.id == question.analysis:
                return analysis.permits(question)
        return False

    def site_rules(self, own: DisclosureRules | None) -> DisclosureRules:
        """What a site applies: the plan's rules, made stricter by the site's own."""
        return self.rules if own is None else self.rules.stricter(own)

    def to_dict(self) -> dict[str, Any]:
        plan: dict[str, Any] = {
            "job": QUERY_JOB,
            "name": self.name,
            "dataset": self.dataset,
            "dataset_params": dict(self.dataset_params),
            "split": self.split,
            "sites": list(self.sites),
            "analyses": [a.to_dict() for a in self.analyses],
            "disclosure": {
                "min_cell": self.rules.min_cell,
                "release_extremes": self.rules.release_extremes,
            },
            "noise": self.noise.to_dict() if self.noise is not None else None,
            "secure": self.secure,
            "code": self.code,
        }
        return dict(canonical(plan, "query plan"))

    @property
    def hash(self) -> str:
        return plan_hash(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> QueryPlan:
        """A plan read back from its JSON (what a site receives); every field checked."""
        expected = {
            "job",
            "name",
            "dataset",
            "dataset_params",
            "split",
            "sites",
            "analyses",
            "disclosure",
            "noise",
            "secure",
            "code",
        }
        if set(raw) != expected:
            missing = sorted(expected - set(raw))
            unknown = sorted(set(raw) - expected)
            raise ConfigError(f"query plan: missing fields {missing}, unknown fields {unknown}")
        if raw["job"] != QUERY_JOB:
            raise ConfigError(f"query plan: 'job' must be '{QUERY_JOB}', found {raw['job']!r}")
        try:
            disclosure = raw["disclosure"]
            noise = raw["noise"]
            return cls(
                name=str(raw["name"]),
                dataset=str(raw["dataset"]),
                dataset_params=dict(raw["dataset_params"]),
                split=raw["split"],
                sites=tuple(str(s) for s in raw["sites"]),
                analyses=tuple(
                    AnalysisSpec(str(a["id"]), str(a["kind"]), dict(a["params"]))
                    for a in raw["analyses"]
                ),
                rules=DisclosureRules(
                    min_cell=int(disclosure["min_cell"]),
                    release_extremes=bool(disclosure["release_extremes"]),
                ),
                noise=None
                if noise is None
                else NoisePlan(noise["mechanism"], float(noise["epsilon"]), float(noise["delta"])),
                secure=raw["secure"],
                code=str(raw["code"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"query plan: malformed field: {exc!r}") from None
