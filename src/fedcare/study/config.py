"""Study configuration: YAML validated by pydantic, with errors a person can act on.

Unknown or misspelled keys are errors that name the key, where it is, and the closest
allowed key ("did you mean ...?"), never silently ignored.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.data.yaml_config import read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    name: str = "heart-disease"
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    name: str = "logistic"
    params: dict[str, Any] = Field(default_factory=dict)


class LocalConfig(_Strict):
    """Local training at each site (and for the baselines)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    epochs: int | None = Field(default=1, ge=1)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _one_of_epochs_steps(self) -> LocalConfig:
        if self.steps is not None and "epochs" in self.model_fields_set and self.epochs is not None:
            raise ValueError("set either 'epochs' or 'steps' for local training, not both")
        return self

    def to_spec(self) -> TrainSpec:
        steps = self.steps
        epochs = None if steps is not None else (self.epochs or 1)
        return TrainSpec(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epochs=epochs,
            steps=steps,
            batch_size=self.batch_size,
        )


class StrategyConfig(_Strict):
    """A federated strategy to compare; ``local`` overrides the study's local training."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    local: LocalConfig | None = None

    @model_validator(mode="after")
    def _known_strategy(self) -> StrategyConfig:
        build_strategy(self.name, self.params, label=self.label)  # raises ConfigError early
        return self

    @property
    def display_name(self) -> str:
        return self.label or self.name


class ParticipationConfig(_Strict):
    fraction: float = Field(default=1.0, gt=0, le=1)
    min_sites: int = Field(default=1, ge=1)


class AttackConfig(_Strict):
    """Simulated poisoned sites (robustness studies): which share attacks, and how."""

    kind: Literal["sign_flip", "scale", "noise", "label_flip"]
    fraction: float = Field(default=0.2, ge=0, lt=1)
    strength: float = Field(default=1.0, gt=0)


class ContributionConfig(_Strict):
    """Each site's contribution to the federation (Shapley values, leave-one-out).

    Every coalition of sites trains its own model with ``strategy`` for the study's rounds;
    exact Shapley needs all 2^n coalitions (n <= 12), Monte-Carlo samples ``permutations``
    orders of the sites and reuses every coalition already trained.
    """

    strategy: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)
    method: Literal["exact", "monte_carlo", "both"] = "both"
    permutations: int = Field(default=48, ge=1)
    stratified: bool = True  # every site at every position equally often
    antithetic: bool = True  # each order paired with its reverse
    seed: int = 0

    @model_validator(mode="after")
    def _known_strategy(self) -> ContributionConfig:
        build_strategy(self.strategy, self.params)
        return self


class SweepStrategyConfig(_Strict):
    """The strategy an epsilon sweep varies (checked once per epsilon, not on its own)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    local: LocalConfig | None = None


class EpsilonSweepConfig(_Strict):
    """A privacy-utility study: the same DP strategy at several epsilons.

    Each epsilon becomes one strategy labelled ``"<label> ε=<epsilon>"``; the report plots
    accuracy against epsilon, with the study's non-private strategies as reference lines.
    """

    strategy: SweepStrategyConfig
    epsilons: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _dp_strategy(self) -> EpsilonSweepConfig:
        dp = self.strategy.params.get("dp")
        if not isinstance(dp, dict):
            raise ValueError(
                "epsilon_sweep.strategy needs params.dp (mode, delta, clip_norm); the sweep "
                "sets its epsilon"
            )
        if any(not e > 0 for e in self.epsilons):
            raise ValueError(f"epsilon_sweep.epsilons must all be > 0, found {self.epsilons}")
        for strategy in self.expand():
            build_strategy(strategy.name, strategy.params)  # every variant must be valid
        return self

    def expand(self) -> list[StrategyConfig]:
        base = self.strategy
        display = base.label or base.name
        out = []
        for eps in self.epsilons:
            dp = {k: v for k, v in base.params["dp"].items() if k != "noise_multiplier"}
            params = {**base.params, "dp": {**dp, "epsilon": eps}}
            out.append(
                StrategyConfig(
                    name=base.name,
                    label=f"{display} ε={eps:g}",
                    params=params,
                    local=base.local,
                )
            )
        return out


class SimulatorConfig(_Strict):
    mode: Literal["auto", "batched", "sequential"] = "auto"
    site_chunk: int = Field(default=256, ge=1)
    eval_every: int = Field(default=1, ge=0)


# local: each site trains alone; pooled: one model on all rows; majority: each site predicts
# the most common class of its own training rows (the floor any model has to beat).
Baseline = Literal["local", "pooled", "majority"]
_DEFAULT_BASELINES: tuple[Baseline, ...] = ("local", "pooled", "majority")


class StudyConfig(_Strict):
    name: str = "study"
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    rounds: int = Field(default=20, ge=1)
    local: LocalConfig = Field(default_factory=LocalConfig)
    participation: ParticipationConfig = Field(default_factory=ParticipationConfig)
    baselines: list[Baseline] = Field(default_factory=lambda: list(_DEFAULT_BASELINES))
    strategies: list[StrategyConfig] = Field(default_factory=list)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    explain: bool = True  # permutation feature importance per site (tabular studies)
    attack: AttackConfig | None = None  # applies to every federated strategy
    contributions: ContributionConfig | None = None  # Shapley / leave-one-out per site
    epsilon_sweep: EpsilonSweepConfig | None = None  # accuracy against epsilon
    output: str | None = None

    @property
    def all_strategies(self) -> list[StrategyConfig]:
        """The listed strategies, then the epsilon sweep's variants."""
        sweep = self.epsilon_sweep.expand() if self.epsilon_sweep else []
        return list(self.strategies) + sweep

    @model_validator(mode="after")
    def _unique_labels(self) -> StudyConfig:
        names = [s.display_name for s in self.all_strategies] + list(self.baselines)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"strategy names must be unique; give repeated ones a 'label': {dupes}"
            )
        if not self.all_strategies and not self.baselines:
            raise ValueError("the study lists no strategies and no baselines: nothing to run")
        return self


# What a study file must say: no default stands in for what the study is about.
REQUIRED_KEYS = ("name", "dataset", "model")
RUNS_KEYS = ("strategies", "baselines", "epsilon_sweep")  # at least one: what to train
_EXAMPLE = "e.g. name: heart, dataset: {name: heart-disease}, model: {name: logistic}, strategies: [{name: fedavg}]"


def load_config(path: Path | str) -> StudyConfig:
    """Read and validate a study YAML file; every problem is a ConfigError naming the file."""
    raw = read_yaml(path, "config file")
    if raw is None:
        raise ConfigError(
            f"{path}: the study file is empty; a study needs the keys "
            f"{', '.join(REQUIRED_KEYS)} and one of {', '.join(RUNS_KEYS)} ({_EXAMPLE})"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings at the top level, found {type(raw).__name__}"
        )
    missing = missing_keys(raw)
    try:
        config = parse_config(resolve_paths(raw, Path(path).parent), source=str(path))
    except ConfigError as exc:  # a misspelled key is also a missing one: say both
        raise ConfigError(f"{exc}; {missing}" if missing else str(exc)) from None
    if missing:
        raise ConfigError(f"{path}: {missing}")
    return config


def missing_keys(raw: dict[str, Any]) -> str:
    """What a study file must say and does not ("" when nothing is missing): it names
    itself, its dataset, its model and what to train; no default stands in for them."""
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    missing += [
        f"{key}.name"
        for key in ("dataset", "model")
        if isinstance(raw.get(key), dict) and "name" not in raw[key]
    ]
    if not any(key in raw for key in RUNS_KEYS):
        missing.append(" or ".join(RUNS_KEYS))
    if not missing:
        return ""
    return (
        f"missing required key(s): {'; '.join(missing)}. A study needs "
        f"{', '.join(REQUIRED_KEYS)} and one of {', '.join(RUNS_KEYS)} ({_EXAMPLE})"
    )


def resolve_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config with its relative paths made absolute from ``folder`` (the YAML's own).

    Path keys: ``dataset.params.schema``, each of ``dataset.params.files`` and ``output``, so
    a study reads the same files whatever directory it is started from.
    """
    out = dict(raw)
    dataset = out.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("params"), dict):
        params = dict(dataset["params"])
        if isinstance(params.get("schema"), str):
            params["schema"] = _beside(folder, params["schema"])
        if isinstance(params.get("files"), dict):
            params["files"] = {
                site: _beside(folder, file) if isinstance(file, str) else file
                for site, file in params["files"].items()
            }
        out["dataset"] = {**dataset, "params": params}
    if isinstance(out.get("output"), str):
        out["output"] = _beside(folder, out["output"])
    return out


def _beside(folder: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).absolute())


def parse_config(raw: dict[str, Any], source: str = "config") -> StudyConfig:
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{source}: " + "; ".join(_describe(err) for err in exc.errors())
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _describe(err: Any) -> str:
    loc = tuple(err.get("loc", ()))
    where = _format_loc(loc)
    if err.get("type") == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{where}'{hint} (allowed here: {', '.join(sorted(allowed))})"
    message = str(err.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"'{where}': {message}" if where else message


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config model found at ``loc`` (walks list items and optionals)."""
    model: Any = StudyConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
