"""What a deployed run does, and the bookkeeping of one round at the coordinator.

:class:`RunPlan` is the job plan a data owner approves: model, strategy (with its upload
stages), local hyper-parameters, rounds, seed, participation and the ordered site list.
Both machines build the same :class:`~fedcare.algorithms.strategy.Strategy` from it, and a
site's index in ``sites`` keys its seeds exactly as the simulator keys that site's.
Strategy ``params`` (client-level ``dp`` included) are part of the plan, so its hash
covers the privacy settings a data owner approves and budgets for.

:class:`StudyPlan` is a whole deployed study: every run (strategy x seed) in the order the
coordinator runs them. A data owner approves its hash once; a site then accepts each run
plan because the run's own hash is in the approved study's list, checked at the site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedcare import __version__
from fedcare.algorithms.registry import build_strategy
from fedcare.algorithms.strategy import Strategy
from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats
from fedcare.core.records import TrainSpec
from fedcare.core.vectors import FloatVector
from fedcare.data.site_table import SiteTableSpec
from fedcare.privacy.client_level import planned_spend
from fedcare.privacy.spec import DPSpec
from fedcare.rounds import Aggregator
from fedcare.runtime.approvals import Approvable, canonical_json
from fedcare.runtime.sampling import Participation
from fedcare.runtime.streamed_update import FoldedMean

_SPEC_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "eps",
    "epochs",
    "steps",
    "batch_size",
)


def spec_to_dict(spec: TrainSpec) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(spec, k) for k in _SPEC_FIELDS}
    out["betas"] = list(spec.betas)
    return out


def spec_from_dict(raw: dict[str, Any]) -> TrainSpec:
    unknown = sorted(set(raw) - {*_SPEC_FIELDS, "betas"})
    if unknown:
        raise ConfigError(f"job plan 'local': unknown field(s) {unknown}")
    values = dict(raw)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    for name in ("lr", "momentum", "weight_decay", "eps"):
        if name in values:
            values[name] = float(values[name])  # canonical JSON writes 1.0 as 1
    try:
        return TrainSpec(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"job plan 'local': {exc}") from exc


@dataclass(frozen=True)
class RunPlan(Approvable):
    """One federated run of one strategy and seed, as the sites approve it."""

    sites: tuple[str, ...]
    strategy: str
    spec: TrainSpec
    rounds: int
    seed: int
    input_shape: tuple[int, ...]
    num_classes: int
    model: str = "logistic"
    model_params: dict[str, Any] = field(default_factory=dict)
    strategy_params: dict[str, Any] = field(default_factory=dict)
    participation: Participation = field(default_factory=Participation)
    eval_every: int = 1
    study: str = "study"
    dataset: str = ""
    code: str = __version__  # fedcare version (or a code hash) the sites will run
    # A study on hospitals' own tables: schema, its hash, feature space and split
    # (fedcare.data.site_table.SiteTableSpec), so the approved hash covers them too.
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"job plan: 'sites' must list distinct sites, found {self.sites}")
        if self.rounds < 1:
            raise ConfigError(f"job plan: 'rounds' must be >= 1, found {self.rounds}")
        if self.seed < 0:
            raise ConfigError(f"job plan: 'seed' must be >= 0, found {self.seed}")
        if self.eval_every < 0:
            raise ConfigError(f"job plan: 'eval_every' must be >= 0, found {self.eval_every}")
        self.participation.count(len(self.sites))  # min_sites <= number of sites

    def build_strategy(self) -> Strategy:
        """The strategy both halves run; refuses what the deployed runtime cannot do."""
        strategy = build_strategy(self.strategy, self.strategy_params)
        if strategy.schedule == "cyclic":
            raise ConfigError(
                f"strategy '{self.strategy}' passes the model from site to site; the deployed "
                "runtime trains sites in parallel (use it in simulation)"
            )
        personal = strategy.personal.personal_pass
        if personal is not None and personal.collects and (strategy.secure or strategy.dp):
            # A plug-in's spec may not say so; the protocol cannot carry both either way.
            raise ConfigError(
                f"strategy '{self.strategy}': its personal pass sends each site's own model "
                "to the coordinator in the clear, which a secure sum or client-level DP would "
                "not cover; drop 'secure' and 'dp'"
            )
        if strategy.secure is not None and strategy.personal.mask_kind:
            raise ConfigError(
                f"strategy '{self.strategy}': layers kept at the sites and secure aggregation do "
                "not combine in deployment; drop 'secure' or the personal layers"
            )
        if strategy.dp is not None and strategy.dp.adaptive_clip and strategy.dp.mode != "central":
            raise ConfigError(
                f"strategy '{self.strategy}': adaptive clipping needs the coordinator to see "
                f"clipped counts; with dp mode '{strategy.dp.mode}' use a fixed clip_norm"
            )
        return strategy

    @property
    def dp(self) -> DPSpec | None:
        """The plan's client-level DP settings (None: no differential privacy)."""
        return self.build_strategy().dp

    def planned_spend(self) -> tuple[float, float] | None:
        """(epsilon, delta) the whole run spends of each site's budget; None without DP."""
        dp = self.dp
        return None if dp is None else planned_spend(dp, self.participation.fraction, self.rounds)

    @property
    def local_spec(self) -> TrainSpec:
        return self.build_strategy().local_spec(self.spec)

    def site_index(self, site: str) -> int:
        if site not in self.sites:
            raise ConfigError(f"site '{site}' is not part of this plan; sites: {list(self.sites)}")
        return self.sites.index(site)

    def content(self) -> dict[str, Any]:
        """What the site shows its owner (canonicalised by ``to_dict``, hashed by ``hash``)."""
        return {
            "study": self.study,
            "dataset": self.dataset,
            "sites": list(self.sites),
            "model": {
                "name": self.model,
                "params": self.model_params,
                "input_shape": list(self.input_shape),
                "num_classes": self.num_classes,
            },
            "strategy": {"name": self.strategy, "params": self.strategy_params},
            "local": spec_to_dict(self.spec),
            "rounds": self.rounds,
            "seed": self.seed,
            "participation": {
                "fraction": self.participation.fraction,
                "min_sites": self.participation.min_sites,
            },
            "eval_every": self.eval_every,
            "code": self.code,
            **({"data": self.data} if self.data else {}),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunPlan:
        """Parse a plan received from the coordinator; every problem names the field."""
        try:
            model, strategy, part = raw["model"], raw["strategy"], raw["participation"]
            plan = cls(
                sites=tuple(str(s) for s in raw["sites"]),
                strategy=str(strategy["name"]),
                strategy_params=dict(strategy.get("params", {})),
                spec=spec_from_dict(dict(raw["local"])),
                rounds=int(raw["rounds"]),
                seed=int(raw["seed"]),
                input_shape=tuple(int(d) for d in model["input_shape"]),
                num_classes=int(model["num_classes"]),
                model=str(model["name"]),
                model_params=dict(model.get("params", {})),
                participation=Participation(float(part["fraction"]), int(part.get("min_sites", 1))),
                eval_every=int(raw.get("eval_every", 1)),
                study=str(raw.get("study", "study")),
                dataset=str(raw.get("dataset", "")),
                code=str(raw.get("code", "")),
                data=dict(raw.get("data", {})),
            )
            plan.build_strategy()
            if plan.data:
                SiteTableSpec.from_dict(plan.data)  # a malformed data section fails here
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # A plan comes from the coordinator: whatever a field holds, the site says so.
            raise ConfigError(f"job plan is malformed: {type(exc).__name__} {exc}") from exc
        return plan


@dataclass(frozen=True)
class StudyPlan(Approvable):
    """Every run of a deployed study, in order, as a data owner approves them at once.

    ``not_deployed`` names the parts of the study config the deployment leaves out
    (baselines, simulated attacks, ...), so the owner sees them too; the hash covers it all.
    """

    study: str
    runs: tuple[RunPlan, ...]
    not_deployed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError(f"study plan '{self.study}': it lists no runs")
        hashes = [r.hash for r in self.runs]
        for i, h in enumerate(hashes):
            if h in hashes[:i]:
                first = self.runs[hashes.index(h)]
                raise ConfigError(
                    f"study plan '{self.study}': runs {hashes.index(h) + 1} and {i + 1} are the "
                    f"same plan ({first.strategy}, seed {first.seed}); list each run once"
                )
        for i, run in enumerate(self.runs):
            if run.sites != self.runs[0].sites:
                raise ConfigError(
                    f"study plan '{self.study}': run {i + 1} names sites {list(run.sites)}, "
                    f"run 1 {list(self.runs[0].sites)}; a study runs on one set of sites"
                )

    @property
    def sites(self) -> tuple[str, ...]:
        return self.runs[0].sites

    @property
    def run_hashes(self) -> tuple[str, ...]:
        return tuple(r.hash for r in self.runs)

    def position(self, run_hash: str) -> int:
        """The 0-based place of the run with ``run_hash``; ConfigError if it is not a run of
        this study (a site never takes the coordinator's word for membership)."""
        hashes = self.run_hashes
        if run_hash not in hashes:
            raise ConfigError(
                f"job plan {run_hash} is not one of the {len(hashes)} runs of study "
                f"'{self.study}' ({self.hash})"
            )
        return hashes.index(run_hash)

    def after(self, run_hash: str) -> tuple[RunPlan, ...]:
        """The runs that follow the run with ``run_hash``."""
        return self.runs[self.position(run_hash) + 1 :]

    def content(self) -> dict[str, Any]:
        """What a site's owner reviews (canonicalised by ``to_dict``, hashed by ``hash``)."""
        return {
            "study": self.study,
            "runs": [r.to_dict() for r in self.runs],
            "not_deployed": list(self.not_deployed),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudyPlan:
        """Parse a study plan received from the coordinator; each run is checked in full."""
        try:
            runs = raw["runs"]
            if not isinstance(runs, list):
                raise TypeError(f"'runs' must be a list, found {type(runs).__name__}")
            not_deployed = tuple(str(x) for x in raw.get("not_deployed", []))
            study = str(raw["study"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"study plan is malformed: {type(exc).__name__} {exc}") from exc
        parsed = []
        for i, run in enumerate(runs):
            if not isinstance(run, dict):
                raise ConfigError(f"study plan: run {i + 1} is not a mapping")
            try:
                parsed.append(RunPlan.from_dict(run))
            except ConfigError as exc:
                raise ConfigError(f"study plan: run {i + 1}: {exc}") from exc
        return cls(study, tuple(parsed), not_deployed)

    def describe(self) -> list[str]:
        """One line per run, for terminals: strategy, seed, rounds and the run plan hash."""
        lines = []
        for i, r in enumerate(self.runs):
            params = canonical_json(r.strategy_params).decode() if r.strategy_params else ""
            lines.append(
                f"{i + 1}. {r.strategy}{' ' + params if params else ''}, seed {r.seed}, "
                f"{r.rounds} rounds (plan {r.hash[:16]})"
            )
        return lines


@dataclass
class Contribution:
    """One accepted update, as the run store and audit log record it."""

    weight: float
    num_samples: int
    nbytes: int
    update_hash: str
    norm: float
    train_loss: float


@dataclass
class RoundProgress:
    """The coordinator's view of the round in progress."""

    round: int
    attempt: int
    sampled: list[str]
    requested: list[str]
    started: float
    deadline: float
    aggregator: Aggregator | FoldedMean  # the round core's, or a plain mean folded at the end
    download_bytes: int
    accepted: dict[str, Contribution] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    secure_session: bytes = b""  # the round's secure-sum session (SecAgg or CKKS)
    secure_meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # what sites stated
    context: Any = None  # the personal pass's round context (MOCHA's task relationship)
    collected: dict[int, FloatVector] = field(default_factory=dict)  # accepted personal models

    def release(self) -> None:
        """Let go of the updates kept for the fold (their scratch files, if any)."""
        if isinstance(self.aggregator, FoldedMean):
            self.aggregator.release()

    @property
    def pending(self) -> list[str]:
        done = self.accepted.keys() | self.rejected.keys() | self.dropped.keys()
        return [s for s in self.requested if s not in done]

    def train_loss(self) -> float:
        total = sum(c.num_samples for c in self.accepted.values())
        loss = sum(c.train_loss * c.num_samples for c in self.accepted.values())
        return loss / max(total, 1)


@dataclass
class EvalProgress:
    """Evaluation of the model after a round, at every site that is ready."""

    round: int
    final: bool
    requested: list[str]
    deadline: float
    results: dict[str, dict[str, EvalStats]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> list[str]:
        return [s for s in self.requested if s not in self.results and s not in self.missing]
