"""What a deployed run leaves in ``STUDY/deploy/RUN/``: its plan file and its results' counts.

Kept apart from the gRPC server so the study layer can read a run's files (for the study
folder's metrics.json) without importing the transport.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.rounds import RunPlan


def run_dir(study_dir: Path, run_id: str) -> Path:
    return Path(study_dir) / "deploy" / run_id


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2, allow_nan=False).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename: ``path`` is the old file or the new one.
    A refused write (full disk) removes the temporary file and raises an OSError naming
    ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def eval_counts(stats: EvalStats) -> dict[str, Any]:
    """The additive counts behind an evaluation, as JSON (the score histogram kept sparse)."""
    hist = stats.score_hist.reshape(-1)
    nonzero = np.flatnonzero(hist)
    return {
        "num_classes": stats.num_classes,
        "count": stats.count,
        "loss_sum": stats.loss_sum,
        "confusion": stats.confusion.tolist(),
        "score_hist": {
            "shape": list(stats.score_hist.shape),
            "index": nonzero.tolist(),
            "value": hist[nonzero].tolist(),
        },
    }


def eval_from_counts(raw: Mapping[str, Any], where: str = "result.json") -> EvalStats:
    """Inverse of :func:`eval_counts`; a malformed entry is a ConfigError naming ``where``."""
    try:
        num_classes = int(raw["num_classes"])
        stats = EvalStats.empty(num_classes)
        stats.count = int(raw["count"])
        stats.loss_sum = float(raw["loss_sum"])
        stats.confusion = np.asarray(raw["confusion"], dtype=np.int64).reshape(
            num_classes, num_classes
        )
        hist = raw["score_hist"]
        if tuple(hist["shape"]) != stats.score_hist.shape:
            raise ValueError(f"score_hist shape {hist['shape']}, expected {stats.score_hist.shape}")
        flat = stats.score_hist.reshape(-1)
        flat[np.asarray(hist["index"], dtype=np.int64)] = np.asarray(hist["value"], np.int64)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{where}: evaluation counts are malformed: {exc}") from exc
    return stats
