"""What a deployed run leaves in ``STUDY/deploy/RUN/``: its plan file and its results' counts.

Kept apart from the gRPC server so the study layer can read a run's files (for the study
folder's metrics.json) without importing the transport.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.storage import write_bytes_atomic
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.rounds import RunPlan


def run_dir(study_dir: Path, run_id: str) -> Path:
    return Path(study_dir) / "deploy" / run_id


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, allow_nan=False).encode())


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: an undefined metric (AUC of a one-class test set) becomes null."""
    return {k: v if np.isfinite(v) else None for k, v in metrics.items()}


def save_plan(
    folder: Path,
    run_id: str,
    plan: RunPlan,
    options: CoordinatorOptions,
    study: Mapping[str, Any] | None = None,
) -> None:
    """``study``: where the plan came from (config, strategy label, dataset facts), for the
    study folder's metrics.json and report."""
    data: dict[str, Any] = {"run_id": run_id, "plan": plan.to_dict(), "options": asdict(options)}
    if study is not None:
        data["study"] = dict(study)
    write_json_atomic(run_dir(folder, run_id) / "plan.json", data)


def read_plan_file(folder: Path, run_id: str) -> dict[str, Any]:
    path = run_dir(folder, run_id) / "plan.json"
    if not path.is_file():
        known = sorted(p.name for p in (Path(folder) / "deploy").glob("*")) or ["none"]
        raise ConfigError(f"no run '{run_id}' in '{folder}' (no {path}); runs: {', '.join(known)}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_plan(folder: Path, run_id: str) -> tuple[RunPlan, CoordinatorOptions]:
    data = read_plan_file(folder, run_id)
    return RunPlan.from_dict(data["plan"]), CoordinatorOptions(**data["options"])
