"""Run a study: baselines (local, pooled, majority class) and federated strategies over seeds.

Writes the study folder: metrics.json, metrics.csv, report.html, the resolved config and
the final models as safetensors (one file per strategy and seed). The writing functions
(:func:`hyperparameters`, :func:`study_metrics`, :func:`save_model`,
:func:`write_study_folder`) are shared with deployed runs (:mod:`fedcare.study.deployed`),
so a deployed study's folder holds the same files in the same form.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from fedcare import __version__
from fedcare.algorithms.attacks import AttackSpec
from fedcare.algorithms.registry import build_strategy
from fedcare.core import faults
from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.core.vectors import ParamLayout
from fedcare.data.base import FederatedDataset
from fedcare.data.registry import dataset_params_for_run, load_dataset
from fedcare.data.tabular import RunSplit
from fedcare.ml.importance import ImportanceCounts, site_importance
from fedcare.ml.torch_adapter import layout_of, vector_to_state_dict
from fedcare.models.registry import build_model
from fedcare.report.html import write_report
from fedcare.runtime.sampling import Participation
from fedcare.sim.backends.choice import BackendChoice
from fedcare.sim.backends.recipe import SimulationRecipe
from fedcare.sim.engine import IsolatedTraining, RoundRecord, RunResult
from fedcare.sim.evaluation import TestSets
from fedcare.study.config import ContributionConfig, StrategyConfig, StudyConfig
from fedcare.study.contribution import CoalitionUtility, site_contributions
from fedcare.study.majority import RULE, SURVIVAL_RULE, describe_classes, majority_run
from fedcare.study.resume import StudyCheckpoints
from fedcare.study.summary import (
    SeedRun,
    add_personalisation_gains,
    headline_metric,
    summarise_strategy,
)

if TYPE_CHECKING:
    from fedcare.sim.backends.ray_backend import RayBackend

# Reached after each round of a federated run, once the round's checkpoint is written.
ROUND_CHECKPOINTED = faults.declare(
    "study.round.checkpointed", "a federated run's round is checkpointed; the next not begun"
)

RoundHook = Callable[[str, int, RoundRecord], None]
StartHook = Callable[[str, int, int], None]


@dataclass
class StudyOutcome:
    directory: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class DatasetFacts:
    """What metrics.json says about the data: name, task, sites' row counts, credits."""

    name: str
    task: str
    sites: list[dict[str, Any]]  # name, num_train, num_test
    description: str = ""
    source: str = ""
    feature_names: list[str] | None = None
    split: dict[str, Any] | None = None  # which split each seed used (see split_facts)
    warnings: list[str] = field(default_factory=list)  # e.g. a site with one-class training rows

    @classmethod
    def of(cls, ds: FederatedDataset, split: dict[str, Any] | None = None) -> DatasetFacts:
        return cls(
            name=ds.name,
            task=ds.task,
            sites=[
                {"name": s.name, "num_train": s.num_train, "num_test": s.num_test} for s in ds.sites
            ],
            description=ds.description,
            source=ds.source,
            feature_names=ds.feature_names,
            split=split,
            warnings=[str(w) for w in _listed(ds.extra.get("warnings"))],
        )

    @property
    def site_names(self) -> list[str]:
        return [str(s["name"]) for s in self.sites]


def _listed(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def split_facts(splits: dict[int, RunSplit]) -> dict[str, Any] | None:
    """metrics.json's record of each seed's train/test split (None: the dataset fixes it).

    ``source`` says what chose the split seeds: each "run seed", or one pinned by
    "dataset.params.seed" or the "schema seed", or the schema's "split column" (no seed).
    """
    if not splits:
        return None
    sources = {s.source for s in splits.values()}
    return {
        "source": sources.pop() if len(sources) == 1 else sorted(sources),
        "pinned": not any(s.follows_run for s in splits.values()),
        "runs": [{"seed": seed, "split_seed": s.seed} for seed, s in sorted(splits.items())],
    }


@dataclass(frozen=True)
class _Job:
    name: str
    kind: str  # local | pooled | majority | federated
    label: str
    strategy: StrategyConfig | None


class StudyRunner:
    """Runs every job of a study config and writes its folder."""

    def __init__(
        self,
        config: StudyConfig,
        out_dir: Path,
        *,
        on_start: StartHook | None = None,
        on_round: RoundHook | None = None,
        dataset: FederatedDataset | None = None,
        backend: BackendChoice | None = None,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        # Each federated run checkpoints every round; ``resume`` continues from them.
        self.checkpoints = StudyCheckpoints(self.out_dir, config)
        self.resume = resume
        # Federated rounds run on this backend; baselines and contributions stay in process.
        self.backend = backend or BackendChoice()
        self._ray: RayBackend | None = None
        self.on_start = on_start
        self.on_round = on_round
        # Each seed's data: loaded once per distinct split (one for datasets whose split does
        # not follow the run seed, or when the caller hands the dataset in).
        self._given = dataset
        self._loaded: dict[int | None, tuple[FederatedDataset, TestSets]] = {}
        self.splits: dict[int, RunSplit] = {}
        first = config.seeds[0] if config.seeds else 0
        self.dataset, self.tests = self.data_for(first)
        if (
            self.dataset.task == "survival"
            and config.explain
            and "explain" in config.model_fields_set
        ):
            raise ConfigError(
                f"explain: permutation importance counts the accuracy a feature's shuffle "
                f"costs; dataset '{self.dataset.name}' is a survival task scored by C-index, "
                "so there is nothing to explain with; remove 'explain' (survival studies skip it)"
            )

    def data_for(self, seed: int) -> tuple[FederatedDataset, TestSets]:
        """(dataset, its test tensors) split as the run with ``seed`` splits it."""
        if self._given is not None:
            key: int | None = None
            params: dict[str, Any] = {}
        else:
            name, study_params = self.config.dataset.name, self.config.dataset.params
            params, split = dataset_params_for_run(name, study_params, seed)
            if split is not None:
                self.splits[seed] = split
            key = split.seed if split is not None and split.follows_run else None
        if key not in self._loaded:
            ds = self._given or load_dataset(self.config.dataset.name, **params)
            self._loaded[key] = (ds, TestSets(ds))
        return self._loaded[key]

    def jobs(self) -> list[_Job]:
        labels = {
            "local": "Local only",
            "pooled": "Pooled (centralised)",
            "majority": "Majority class",
        }
        out = [_Job(b, b, labels[b], None) for b in self.config.baselines]
        out += [
            _Job(s.display_name, "federated", s.display_name, s) for s in self.config.all_strategies
        ]
        return out

    def run(self) -> StudyOutcome:
        """Run every job and write the study folder. With ``resume``, federated runs
        continue from their checkpoints (a finished one only evaluates its final model);
        baselines and contributions, which keep none, run again (they are deterministic)."""
        started = time.perf_counter()
        if self.resume:
            self.checkpoints.check_resumable()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "models").mkdir(exist_ok=True)
        if not self.resume:
            self.checkpoints.start()
        entries = []
        with self._backend_session():
            for job in self.jobs():
                if job.kind == "majority":
                    entries.append(self._majority_entry(job))
                    continue
                runs = [self._run_job(job, seed) for seed in self.config.seeds]
                entries.append(
                    summarise_strategy(
                        job.name,
                        job.kind,
                        job.label,
                        hyperparameters(self.config, job.strategy),
                        runs,
                        self.dataset.site_names,
                        self.dataset.feature_names,
                    )
                )
        add_personalisation_gains(entries)
        for seed in self.config.seeds:  # every seed's split is recorded, whatever ran
            self.data_for(seed)
        splits = {s: self.splits[s] for s in self.config.seeds if s in self.splits}
        facts = DatasetFacts.of(self.dataset, split_facts(splits))
        metrics = study_metrics(self.config, facts, entries, time.perf_counter() - started)
        if self.config.contributions is not None:
            metrics["contributions"] = self._contributions(self.config.contributions)
        write_study_folder(self.out_dir, self.config, metrics)
        self.checkpoints.remove()
        return StudyOutcome(self.out_dir, metrics)

    def _majority_entry(self, job: _Job) -> dict[str, Any]:
        """The majority-class baseline: no model, no rounds; evaluated like every model."""
        runs, classes = [], []
        for seed in self.config.seeds:
            t0 = time.perf_counter()
            result, predicted = majority_run(self.data_for(seed)[0])
            runs.append(SeedRun(seed=seed, result=result, wall_time_s=time.perf_counter() - t0))
            classes.append(predicted)
        entry = summarise_strategy(
            job.name,
            job.kind,
            job.label,
            {"rule": SURVIVAL_RULE if self.dataset.task == "survival" else RULE},
            runs,
            self.dataset.site_names,
        )
        entry["predicts"] = describe_classes(classes, self.dataset.class_names)
        return entry

    def _run_job(self, job: _Job, seed: int) -> SeedRun:
        cfg = self.config
        dataset, tests = self.data_for(seed)
        module = build_model(
            cfg.model.name, dataset.input_shape, dataset.num_classes, **cfg.model.params
        )
        local = job.strategy.local if job.strategy is not None and job.strategy.local else cfg.local
        if self.on_start is not None:
            self.on_start(job.name, seed, cfg.rounds)

        def hook(record: RoundRecord) -> None:
            if self.on_round is not None:
                self.on_round(job.name, seed, record)

        t0 = time.perf_counter()
        result: RunResult
        if job.strategy is None:
            result = IsolatedTraining(
                module=module,
                dataset=dataset,
                spec=local.to_spec(),
                rounds=cfg.rounds,
                seed=seed,
                pooled=job.kind == "pooled",
                mode=cfg.simulator.mode,
                eval_every=cfg.simulator.eval_every,
                test_sets=tests,
            ).run(hook)
        else:
            recipe = self.recipe(job.strategy, seed)
            simulation = recipe.build(
                dataset,
                eval_every=cfg.simulator.eval_every,
                test_sets=tests,
                checkpoint_dir=self.checkpoints.run_folder(job.name, seed),
                **self._driver_options(recipe),
            )

            def saved(record: RoundRecord) -> None:  # the round's checkpoint is written
                faults.reach(ROUND_CHECKPOINTED)
                hook(record)

            resume = self.resume and self.checkpoints.has_checkpoint(job.name, seed)
            result = simulation.run(saved, resume=resume)
        wall = time.perf_counter() - t0
        layout = layout_of(module)
        save_model(
            self.out_dir,
            job.name,
            seed,
            self.config.model.name,
            dataset.name,
            layout,
            result.final_params,
            dataset.site_names,
        )
        return SeedRun(
            seed=seed,
            result=result,
            wall_time_s=wall,
            importance=self._explain(dataset, module, layout, result, seed),
        )

    def recipe(self, strategy: StrategyConfig, seed: int) -> SimulationRecipe:
        """The federated run of ``strategy`` with ``seed`` as settings a Ray worker rebuilds."""
        cfg = self.config
        local = strategy.local or cfg.local
        params, _ = dataset_params_for_run(cfg.dataset.name, cfg.dataset.params, seed)
        return SimulationRecipe(
            dataset=cfg.dataset.name,
            dataset_params=params,
            model=cfg.model.name,
            model_params=dict(cfg.model.params),
            strategy=strategy.name,
            strategy_params=dict(strategy.params),
            strategy_label=strategy.label,
            spec=local.to_spec(),
            rounds=cfg.rounds,
            seed=seed,
            participation=Participation(cfg.participation.fraction, cfg.participation.min_sites),
            mode=cfg.simulator.mode,
            site_chunk=cfg.simulator.site_chunk,
            attack=AttackSpec(**cfg.attack.model_dump()) if cfg.attack else None,
        )

    @contextmanager
    def _backend_session(self) -> Iterator[None]:
        """The study's connection to its backend: a Ray cluster is joined (or started) once."""
        if not self.backend.is_ray:
            yield
            return
        if self._given is not None:
            raise ConfigError(
                "--backend ray: Ray workers load the data from the study's dataset settings; "
                "a dataset handed in as an object cannot be loaded there (name it in the config)"
            )
        from fedcare.sim.backends.ray_backend import RayBackend

        with RayBackend(self.backend.address) as ray_backend:
            self._ray = ray_backend
            try:
                yield
            finally:
                self._ray = None

    def _driver_options(self, recipe: SimulationRecipe) -> dict[str, Any]:
        """What the driving simulation gets beyond the recipe: the Ray backend, if any."""
        if self._ray is None:
            return {}
        return {"backend": self._ray.for_run(recipe)}

    def _contributions(self, config: ContributionConfig) -> dict[str, Any]:
        """Shapley and leave-one-out values of each site (one federated run per coalition),
        on the split of the contribution run's own seed."""
        cfg = self.config
        dataset, tests = self.data_for(config.seed)
        utility = CoalitionUtility(
            dataset=dataset,
            model=(cfg.model.name, dict(cfg.model.params)),
            spec=cfg.local.to_spec(),
            rounds=cfg.rounds,
            config=config,
            test_sets=tests,
        )
        return site_contributions(utility, list(dataset.site_names), config)

    def _explain(
        self, ds: FederatedDataset, module: Any, layout: ParamLayout, result: RunResult, seed: int
    ) -> dict[str, ImportanceCounts] | None:
        """Permutation importance at each site, for tabular studies with named features."""
        if len(ds.input_shape) != 1 or not ds.feature_names or not self.config.explain:
            return None
        if ds.task == "survival":
            # Permutation importance counts accuracy drops: not defined for a risk score.
            return None
        seeds = SeedStream(seed)
        out = {}
        for i, site in enumerate(ds.sites):
            params = (
                result.final_params[i] if len(result.final_params) > 1 else result.final_params[0]
            )
            out[site.name] = site_importance(
                module,
                layout,
                params,
                torch.from_numpy(site.x_test),
                torch.from_numpy(site.y_test),
                ds.num_classes,
                seeds.generator("eval", 0, i),
            )
        return out


def save_model(
    out_dir: Path,
    name: str,
    seed: int,
    model: str,
    dataset: str,
    layout: ParamLayout,
    final_params: Sequence[np.ndarray],
    site_names: Sequence[str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """``models/NAME-seedS.safetensors``: one state dict, or one per site (personalised)."""
    tensors = {}
    if len(final_params) == 1:
        tensors = vector_to_state_dict(final_params[0], layout)
    else:
        for site, params in zip(site_names, final_params, strict=True):
            tensors.update(
                {f"{site}/{k}": v for k, v in vector_to_state_dict(params, layout).items()}
            )
    meta = {
        "strategy": name,
        "seed": str(seed),
        "model": model,
        "dataset": dataset,
        "layout": layout.to_json(),
        "fedcare_version": __version__,
        **(metadata or {}),
    }
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    path = Path(out_dir) / "models" / f"{safe}-seed{seed}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def hyperparameters(config: StudyConfig, strategy_config: StrategyConfig | None) -> dict[str, Any]:
    """The hyper-parameter table's column for one job (a baseline when no strategy)."""
    local = (
        strategy_config.local
        if strategy_config is not None and strategy_config.local
        else config.local
    )
    hp: dict[str, Any] = {f"local.{k}": v for k, v in local.model_dump().items() if v is not None}
    hp["rounds"] = config.rounds
    if strategy_config is not None:
        strategy = build_strategy(strategy_config.name, strategy_config.params)
        opt = strategy.server_optimizer
        hp["strategy"] = strategy_config.name
        hp["server.optimizer"] = opt.name
        hp["server.lr"] = opt.lr
        if opt.name == "sgd" and opt.momentum:
            hp["server.momentum"] = opt.momentum
        if opt.name != "sgd":
            hp.update({"server.beta1": opt.beta1, "server.beta2": opt.beta2, "server.tau": opt.tau})
        hp["weighting"] = strategy.weighting
        if strategy.dp is not None:
            hp["privacy.dp"] = strategy.dp.label
            hp["privacy.delta"] = strategy.dp.delta
        if strategy.secure is not None:
            hp["privacy.secure"] = strategy.secure.label
        hp.update(
            {f"params.{k}": v for k, v in strategy_config.params.items() if k not in ("server_lr",)}
        )
        hp["participation.fraction"] = config.participation.fraction
    return hp


def study_metrics(
    config: StudyConfig, data: DatasetFacts, entries: list[dict[str, Any]], wall: float
) -> dict[str, Any]:
    """The whole metrics.json document around the strategies' entries."""
    dumped = config.model_dump(mode="json")
    # The report footer credits the data donors from the config's dataset section.
    dumped["dataset"]["attribution"] = data.source
    return {
        "schema_version": 1,
        "study": {
            "name": config.name,
            "dataset": data.name,
            "model": config.model.name,
            "task": data.task,
            "seeds": list(config.seeds),
            "rounds": config.rounds,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fedcare_version": __version__,
            "wall_time_s": wall,
            "config": dumped,
            "description": data.description,
        }
        | ({"split": data.split} if data.split is not None else {})
        | ({"data_warnings": list(data.warnings)} if data.warnings else {}),
        "sites": [dict(s) for s in data.sites],
        "strategies": entries,
    }


def write_study_folder(out_dir: Path, config: StudyConfig, metrics: dict[str, Any]) -> Path:
    """metrics.json, config.yaml, then metrics.csv and report.html rendered from metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    return write_report(out_dir)


def best_federated(metrics: dict[str, Any]) -> tuple[str, float]:
    """The federated strategy with the highest mean per-site accuracy (C-index: survival)."""
    fed = [s for s in metrics["strategies"] if s["kind"] == "federated"]
    if not fed:
        return "", float("nan")

    def score(entry: dict[str, Any]) -> Any:
        return entry["overall"][f"mean_site_{headline_metric(entry)}"]["mean"]

    best = max(fed, key=lambda s: score(s) or -np.inf)
    return best["name"], float(score(best))
