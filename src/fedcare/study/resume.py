"""A simulated study's checkpoints: where each federated run keeps its last round, and the
check that a resumed study is the study that wrote them.

While a study runs, its folder holds ``checkpoints/``: ``study.json`` (the resolved config
and its SHA-256, written before the first run starts) and one folder per federated run
(``NAME-seedS/checkpoint.safetensors``, the run state after its last round, replaced
atomically every round: docs/checkpoint-format.md). ``fedcare simulate --resume`` reads
them back: every random draw of a run is keyed by (seed, round, site), so a run resumed
from its checkpoint ends with the model an uninterrupted run ends with, bit for bit. When
the study folder is complete the checkpoints are removed (the models are in ``models/``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.core.storage import write_bytes_atomic
from fedcare.runtime.checkpoint import CHECKPOINT_NAME
from fedcare.study.config import StudyConfig

FOLDER = "checkpoints"
STAMP = "study.json"


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of the resolved config's canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two resolved configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in sorted(old.keys() | new.keys(), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                found.append(name)
            else:
                found += changed_fields(old[key], new[key], name)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found += changed_fields(a, b, f"{prefix}[{i}]")
        return found
    return [] if old == new else [prefix or "(the whole config)"]


class StudyCheckpoints:
    """The ``checkpoints/`` folder of one study folder."""

    def __init__(self, study_dir: Path, config: StudyConfig) -> None:
        self.folder = Path(study_dir) / FOLDER
        self.config = config.model_dump(mode="json")
        self.digest = config_digest(self.config)

    @property
    def stamp(self) -> Path:
        return self.folder / STAMP

    def start(self) -> None:
        """A new study: checkpoints of an earlier one in this folder are removed."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        body = {"config_hash": self.digest, "config": self.config}
        write_bytes_atomic(self.stamp, json.dumps(body, indent=2).encode())

    def check_resumable(self) -> None:
        """Refuse to resume without checkpoints, or under a config that changed since."""
        if not self.stamp.is_file():
            raise ConfigError(
                f"{self.folder.parent}: no checkpoint to resume from ({self.stamp} does not "
                "exist: the study never started in this folder, or it finished and its "
                "checkpoints were removed); run it without --resume to start it"
            )
        try:
            saved = json.loads(self.stamp.read_text())
            old_digest, old_config = saved["config_hash"], saved["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.stamp}: not a study checkpoint record ({exc}); run the study "
                "without --resume to start it again"
            ) from exc
        if old_digest != self.digest:
            changed = ", ".join(changed_fields(old_config, self.config)) or "unknown"
            raise ConfigError(
                f"{self.stamp}: the study's config changed since its checkpoints were "
                f"written (config hash {str(old_digest)[:12]}…, now {self.digest[:12]}…; "
                f"changed: {changed}); a resumed run would mix two studies. Restore the "
                "config, or run without --resume to start again"
            )

    def run_folder(self, job: str, seed: int) -> Path:
        """Where the federated run of ``job`` with ``seed`` keeps its checkpoint."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in job)
        return self.folder / f"{safe}-seed{seed}"

    def has_checkpoint(self, job: str, seed: int) -> bool:
        return (self.run_folder(job, seed) / CHECKPOINT_NAME).is_file()

    def remove(self) -> None:
        """The study folder is complete: its checkpoints are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
