"""Atomic checkpoints of the full algorithm state (server state + per-site states).

A checkpoint is one safetensors file of arrays plus JSON metadata, written to a temporary
file and renamed into place, so a crash mid-write leaves the previous checkpoint intact.
Resuming from it reproduces an uninterrupted run because every random draw is keyed by
(run seed, round, site).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fedcare.core import faults
from fedcare.core.errors import FedcareError
from fedcare.core.records import ServerState, SiteState

CHECKPOINT_NAME = "checkpoint.safetensors"
WRITE_POINT = faults.declare(
    "coordinator.checkpoint.write",
    "the round's checkpoint is about to be written to its temporary file: the previous "
    "checkpoint is still the one in place",
)


class CheckpointError(FedcareError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


@dataclass
class Checkpoint:
    state: ServerState
    site_states: dict[str, SiteState]
    extra: dict[str, Any]


def save_checkpoint(
    directory: Path, state: ServerState, site_states: dict[str, SiteState], extra: dict[str, Any]
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(state.to_tensors())
    for site, arrays in site_states.items():
        for name, value in arrays.items():
            tensors[f"site/{site}/{name}"] = value
    metadata = state.metadata()
    metadata["extra"] = json.dumps(extra)
    target = directory / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    os.close(fd)
    try:
        data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
        write_durably(tmp, data, WRITE_POINT, name=target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_durably(path: str | Path, data: bytes, point: str, *, name: str | Path) -> None:
    """Write ``data`` to ``path`` and fsync it; a refused write (full disk, read-only file
    system) is an OSError naming ``name``, the file the caller is replacing."""
    try:
        faults.reach(point)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(name)) from exc


def load_checkpoint(directory: Path) -> Checkpoint:
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' is unreadable: {exc}") from exc
    metadata: dict[str, str] = header.get("__metadata__", {})
    if "round" not in metadata or "params" not in tensors:
        raise CheckpointError(f"checkpoint '{path}' lacks the round or the parameters")
    state = ServerState.from_tensors(
        {k: v for k, v in tensors.items() if not k.startswith("site/")}, metadata
    )
    site_states: dict[str, SiteState] = {}
    for key, value in tensors.items():
        if key.startswith("site/"):
            _, site, name = key.split("/", 2)
            site_states.setdefault(site, {})[name] = value
    extra = json.loads(metadata.get("extra", "{}"))
    return Checkpoint(state=state, site_states=site_states, extra=extra)
