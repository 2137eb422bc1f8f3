"""Atomic, self-verifying checkpoints of the full algorithm state.

A checkpoint is one safetensors file of arrays (server state + per-site states) plus JSON
metadata, written to a temporary file, fsynced, renamed into place and the folder fsynced,
so a crash at any moment leaves either the previous checkpoint or the new one, whole.
Resuming from it reproduces an uninterrupted run because every random draw is keyed by
(run seed, round, site).

Each checkpoint carries ``digest``: SHA-256 over every array (name, dtype, shape, bytes) and
every metadata value, and ``previous``: the digest of the checkpoint it replaced. Loading
recomputes the digest, so a flipped bit, edited weights, an edited header or a truncated
file is refused naming the file; the deployed coordinator also records each digest in the
audit log, which catches a deleted, rolled-back or re-signed checkpoint
(:mod:`fedcare.net.reconcile`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fedcare.core import faults
from fedcare.core.errors import FedcareError
from fedcare.core.records import ServerState, SiteState
from fedcare.core.vectors import FloatVector
from fedcare.rounds.state import RunState

CHECKPOINT_NAME = "checkpoint.safetensors"
WRITE_POINT = faults.declare(
    "coordinator.checkpoint.write",
    "the round's checkpoint is about to be written to its temporary file: the previous "
    "checkpoint is still the one in place",
)
TEMPORARY_GLOB = ".checkpoint-*.tmp"
DIGEST_KEY = "digest"  # metadata key of the file's own digest (not covered by it)
PREVIOUS_KEY = "previous"  # digest of the checkpoint this one replaced ("" for the first)


class CheckpointError(FedcareError):
    """A checkpoint is missing, unreadable, changed or does not belong to this run."""


@dataclass
class Checkpoint:
    state: ServerState
    site_states: dict[str, SiteState]
    extra: dict[str, Any]
    digest: str = ""  # "" only for a checkpoint written before digests existed
    previous: str = ""
    path: Path | None = None


class SavedCheckpoint(NamedTuple):
    path: Path
    digest: str


def content_digest(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    """SHA-256 over arrays and metadata, independent of the file layout (pure)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode())
        h.update(value.tobytes())
    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the entry lives in the folder)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_safetensors(
    target: Path,
    tensors: Mapping[str, FloatVector],
    metadata: dict[str, str],
    *,
    prefix: str,
    write_point: str,
    on_written: Callable[[], None] | None = None,
    on_renamed: Callable[[], None] | None = None,
) -> str:
    """Write ``tensors`` + ``metadata`` (plus their digest) atomically; returns the digest.

    ``write_point`` is reached just before the write (a full disk is injected there);
    ``on_written`` runs once the temporary file is complete and fsynced, ``on_renamed``
    once it replaced ``target`` (crash tests put fault points there).
    """
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = dict(metadata)
    digest = content_digest(arrays, meta)
    meta[DIGEST_KEY] = digest
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        data = save(arrays, metadata=meta)
        write_durably(tmp, data, write_point, name=target)
        if on_written is not None:
            on_written()
        os.replace(tmp, target)
        fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if on_renamed is not None:
        on_renamed()
    return digest


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


def read_verified_safetensors(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Arrays and metadata of a file written by :func:`write_atomic_safetensors`, after
    checking its digest; a file without one (older format) is returned unchecked."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what} '{path}' is unreadable (truncated or damaged?): {exc}"
        ) from exc
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{what} '{path}': its metadata must map names to strings")
    recorded = metadata.get(DIGEST_KEY)
    if recorded is not None:
        found = content_digest(tensors, metadata)
        if found != recorded:
            raise CheckpointError(
                f"{what} '{path}' was changed or damaged: its content hashes to "
                f"{found[:16]}… but its header records digest {recorded[:16]}…"
            )
    return tensors, metadata


def save_checkpoint(
    directory: Path,
    state: ServerState,
    site_states: dict[str, SiteState],
    extra: dict[str, Any],
    *,
    previous: str = "",
    on_written: Callable[[], None] | None = None,
    on_renamed: Callable[[], None] | None = None,
) -> SavedCheckpoint:
    """Replace ``directory/checkpoint.safetensors`` atomically; ``previous``: the digest
    of the checkpoint being replaced (chains them, so an older one is recognisable)."""
    tensors = dict(state.to_tensors())
    for site, arrays in site_states.items():
        for name, value in arrays.items():
            tensors[f"site/{site}/{name}"] = value
    metadata = state.metadata()
    metadata["extra"] = json.dumps(extra)
    metadata[PREVIOUS_KEY] = previous
    target = Path(directory) / CHECKPOINT_NAME
    digest = write_atomic_safetensors(
        target,
        tensors,
        metadata,
        prefix=".checkpoint-",
        write_point=WRITE_POINT,
        on_written=on_written,
        on_renamed=on_renamed,
    )
    return SavedCheckpoint(target, digest)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary checkpoint files a crash left behind; returns what was removed."""
    removed = sorted(Path(directory).glob(TEMPORARY_GLOB)) if Path(directory).is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def load_checkpoint(directory: Path) -> Checkpoint:
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at '{path}'")
    tensors, metadata = read_verified_safetensors(path, "checkpoint")
    if "round" not in metadata or "params" not in tensors:
        raise CheckpointError(f"checkpoint '{path}' lacks the round or the parameters")
    try:
        state = ServerState.from_tensors(
            {k: v for k, v in tensors.items() if not k.startswith("site/")}, metadata
        )
        extra = json.loads(metadata.get("extra", "{}"))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint '{path}' has malformed metadata: {exc}") from exc
    site_states: dict[str, SiteState] = {}
    for key, value in tensors.items():
        if key.startswith("site/"):
            _, site, name = key.split("/", 2)
            site_states.setdefault(site, {})[name] = value
    return Checkpoint(
        state=state,
        site_states=site_states,
        extra=extra,
        digest=metadata.get(DIGEST_KEY, ""),
        previous=metadata.get(PREVIOUS_KEY, ""),
        path=path,
    )


def save_run_state(
    directory: Path,
    run: RunState,
    *,
    previous: str = "",
    on_written: Callable[[], None] | None = None,
    on_renamed: Callable[[], None] | None = None,
) -> SavedCheckpoint:
    """Write ``run`` as ``directory/checkpoint.safetensors`` (see :func:`save_checkpoint`)."""
    return save_checkpoint(
        directory,
        run.server,
        dict(run.site_states),
        run.extra(),
        previous=previous,
        on_written=on_written,
        on_renamed=on_renamed,
    )


def load_run_state(directory: Path) -> RunState:
    """The run state in ``directory``'s checkpoint, after checking its digest."""
    ckpt = load_checkpoint(directory)
    return RunState.from_parts(ckpt.state, ckpt.site_states, ckpt.extra)
