"""What a deployed study leaves in ``STUDY/deploy/``: one file per study, beside its runs.

``deploy/study-HASH16.json`` is written before the study's first run starts. It holds the
study plan the owners approve (every run, in order, and what is not deployed), the run id
each run will have, their strategy labels, the coordinator options and where the study came
from (config, dataset facts), so ``fedcare coordinator resume`` can continue a study where
it stopped: the unfinished run from its checkpoint, then the runs that never started.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.net.run_files import write_json_atomic
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.rounds import StudyPlan


@dataclass(frozen=True)
class DeployedStudy:
    """A study's runs as the coordinator serves them, one after another."""

    plan: StudyPlan
    run_ids: tuple[str, ...]
    labels: tuple[str, ...]
    options: CoordinatorOptions
    about: dict[str, Any]  # the study config and dataset facts the runs came from

    def __post_init__(self) -> None:
        if not len(self.run_ids) == len(self.labels) == len(self.plan.runs):
            raise ConfigError(
                f"study '{self.plan.study}': {len(self.plan.runs)} runs but "
                f"{len(self.run_ids)} run ids and {len(self.labels)} labels"
            )
        if len(set(self.run_ids)) != len(self.run_ids):
            raise ConfigError(f"study '{self.plan.study}': run ids repeat: {list(self.run_ids)}")

    def run_about(self, index: int) -> dict[str, Any]:
        """What the run's plan.json keeps of where it came from (its label included)."""
        return {**self.about, "label": self.labels[index], "study_hash": self.plan.hash}

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_hash": self.plan.hash,
            "plan": self.plan.to_dict(),
            "run_ids": list(self.run_ids),
            "labels": list(self.labels),
            "options": asdict(self.options),
            "about": self.about,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> DeployedStudy:
        try:
            study = cls(
                StudyPlan.from_dict(raw["plan"]),
                tuple(str(r) for r in raw["run_ids"]),
                tuple(str(x) for x in raw["labels"]),
                CoordinatorOptions(**raw["options"]),
                dict(raw.get("about", {})),
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{where}: not a readable study file: {exc}") from exc
        if study.plan.hash != raw.get("study_hash"):
            raise ConfigError(
                f"{where}: its study plan hashes to {study.plan.hash}, the file says "
                f"{raw.get('study_hash')} (edited by hand?)"
            )
        return study


def study_file(folder: Path, study: StudyPlan) -> Path:
    return Path(folder) / "deploy" / f"study-{study.hash[:16]}.json"


def save_study(folder: Path, study: DeployedStudy) -> Path:
    path = study_file(folder, study.plan)
    write_json_atomic(path, study.to_dict())
    return path


def load_studies(folder: Path) -> list[DeployedStudy]:
    """The folder's deployed studies, oldest file first."""
    paths = sorted(
        (Path(folder) / "deploy").glob("study-*.json"), key=lambda p: (p.stat().st_mtime, p.name)
    )
    return [DeployedStudy.from_dict(json.loads(p.read_text()), str(p)) for p in paths]


def study_of_run(folder: Path, run_id: str) -> DeployedStudy | None:
    """The study a run belongs to (None: a run started on its own by an older fedcare)."""
    for study in reversed(load_studies(folder)):
        if run_id in study.run_ids:
            return study
    return None
