"""The Python API: build and run a study in a few lines (the CLI does the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fedcare.sim.backends.choice import choose_backend
from fedcare.study.config import StudyConfig, parse_config
from fedcare.study.runner import StudyRunner

if TYPE_CHECKING:
    from fedcare.study.analysis_config import AnalysisConfig


@dataclass
class StudyResult:
    directory: Path
    metrics: dict[str, Any]

    def accuracy(self, strategy: str, site: str | None = None) -> float:
        """Mean test accuracy over seeds: one site's, or the mean over sites."""
        return self._mean_metric(strategy, site, "accuracy", "c_index")

    def c_index(self, strategy: str, site: str | None = None) -> float:
        """Survival studies: mean test C-index over seeds, one site's or the mean over sites
        (FLamby's metric)."""
        return self._mean_metric(strategy, site, "c_index", "accuracy")

    def _mean_metric(self, strategy: str, site: str | None, metric: str, other: str) -> float:
        entry = next((s for s in self.metrics["strategies"] if s["name"] == strategy), None)
        if entry is None:
            known = [s["name"] for s in self.metrics["strategies"]]
            raise KeyError(f"no strategy '{strategy}' in this study; it has {known}")
        if f"mean_site_{metric}" not in entry["overall"]:
            raise KeyError(
                f"this study reports {other.replace('_', '-')}, not {metric.replace('_', '-')}: "
                f"use result.{other}(...)"
            )
        if site is not None and site not in entry["per_site"]:
            raise KeyError(f"no site '{site}' in this study; it has {list(entry['per_site'])}")
        stat = (
            entry["overall"][f"mean_site_{metric}"]
            if site is None
            else entry["per_site"][site][metric]
        )
        return float(stat["mean"])

    def table(self) -> str:
        from fedcare.cli.progress import results_table

        console = Console(record=True, width=160)
        with console.capture() as capture:
            console.print(results_table(self.metrics))
        return capture.get()


@dataclass
class Study:
    """A study under construction; ``run`` validates it exactly as a YAML file would be."""

    dataset: str = "heart-disease"
    model: str = "logistic"
    rounds: int = 20
    seeds: list[int] = field(default_factory=lambda: [0])
    local: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=lambda: ["local", "pooled", "majority"])
    participation: dict[str, Any] = field(default_factory=dict)
    name: str = "study"
    strategies: list[dict[str, Any]] = field(default_factory=list)

    def add_strategy(self, name: str, *, label: str | None = None, **params: Any) -> Study:
        entry: dict[str, Any] = {"name": name, "params": params}
        if label is not None:
            entry["label"] = label
        self.strategies.append(entry)
        return self

    def config(self) -> StudyConfig:
        raw = {
            "name": self.name,
            "dataset": {"name": self.dataset, "params": self.dataset_params},
            "model": {"name": self.model, "params": self.model_params},
            "rounds": self.rounds,
            "seeds": self.seeds,
            "local": self.local,
            "baselines": self.baselines,
            "participation": self.participation,
            "strategies": self.strategies,
        }
        return parse_config(raw, source="Study")

    def run(
        self, out_dir: str | Path, *, backend: str = "inprocess", address: str | None = None
    ) -> StudyResult:
        """Run the study into ``out_dir``; ``backend="ray"`` (and ``address``) as
        ``fedcare simulate --backend ray [--address ADDR]``."""
        choice = choose_backend(backend, address)
        outcome = StudyRunner(self.config(), Path(out_dir), backend=choice).run()
        return StudyResult(outcome.directory, outcome.metrics)


@dataclass
class AnalysisRun:
    """A finished analysis: its folder, the plan hash and every analysis's tables."""

    directory: Path
    plan_hash: str
    metrics: dict[str, Any]

    def result(self, analysis_id: str) -> dict[str, Any]:
        """The tables of the analysis with ``analysis_id`` (its kind's, when unnamed)."""
        for entry in self.metrics["analyses"]:
            if entry["id"] == analysis_id:
                return dict(entry["tables"])
        known = [e["id"] for e in self.metrics["analyses"]]
        raise KeyError(f"no analysis '{analysis_id}' in this run; it has {known}")

    @property
    def suppressed(self) -> list[str]:
        """What the sites withheld, and why."""
        return list(self.metrics["suppressed"])


@dataclass
class Analysis:
    """Federated statistics in Python; ``run`` checks it exactly as an analysis YAML is.

    ``Analysis.from_yaml("analysis.yaml").run("studies/x")``, or built in code:
    ``Analysis("brca", dataset="tcga-brca").add("km").add("cox", covariates=["age"])``.
    """

    name: str = "analysis"
    dataset: str = "heart-disease"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    split: str = "all"
    analyses: list[dict[str, Any]] = field(default_factory=list)
    disclosure: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None  # a whole analysis file, as read by from_yaml

    @classmethod
    def from_yaml(cls, path: str | Path) -> Analysis:
        from fedcare.study.analysis_config import load_analysis_config

        config = load_analysis_config(path)
        return cls(name=config.name, raw=config.model_dump(mode="json"))

    def add(self, kind: str, *, id: str | None = None, **params: Any) -> Analysis:
        """Append an analysis of ``kind`` with its parameters."""
        if self.raw is not None:
            raise ValueError("this analysis was read from a file; edit the file instead")
        entry: dict[str, Any] = {"kind": kind, "params": params}
        if id is not None:
            entry["id"] = id
        self.analyses.append(entry)
        return self

    def config(self) -> AnalysisConfig:
        from fedcare.study.analysis_config import parse_analysis_config

        raw = self.raw or {
            "name": self.name,
            "dataset": {"name": self.dataset, "params": self.dataset_params},
            "split": self.split,
            "analyses": self.analyses,
            "disclosure": self.disclosure,
        }
        return parse_analysis_config(raw, source="Analysis")

    def run(self, out_dir: str | Path | None = None) -> AnalysisRun:
        """Run it in the simulator into ``out_dir`` (default: studies/NAME)."""
        from fedcare.study.analysis_runner import AnalysisRunner

        config = self.config()
        target = Path(out_dir or config.output or f"studies/{config.name}")
        outcome = AnalysisRunner(config, target).run()
        return AnalysisRun(outcome.directory, outcome.plan_hash, outcome.metrics)
