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
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load_file

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
        _hash_array(h, name, np.ascontiguousarray(tensors[name]))
    _hash_metadata(h, metadata)
    return h.hexdigest()


def _hash_array(h: Any, name: str, value: npt.NDArray[Any]) -> None:
    h.update(json.dumps([name, value.dtype.str, list(value.shape)]).encode())
    h.update(_raw(value))  # a view of the array's bytes: no copy of a large model


def _hash_metadata(h: Any, metadata: Mapping[str, str]) -> None:
    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode())


def _raw(value: npt.NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array, as a view."""
    return value.reshape(-1).view(np.uint8).data if value.size else memoryview(b"")


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
    write_point: str | None,
    on_written: Callable[[], None] | None = None,
    on_renamed: Callable[[], None] | None = None,
) -> str:
    """Write ``tensors`` + ``metadata`` (plus their digest) atomically; returns the digest.

    ``write_point`` (a fault point, or None) is reached just before the write (a full disk
    is injected there);
    ``on_written`` runs once the temporary file is complete and fsynced, ``on_renamed``
    once it replaced ``target`` (crash tests put fault points there).
    """
    arrays = {k: _little_endian(np.ascontiguousarray(v)) for k, v in tensors.items()}
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        digest = write_safetensors_durably(tmp, arrays, metadata, write_point, name=target)
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


# safetensors' names for the numpy dtypes a checkpoint holds.
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}
_PLACEHOLDER = "0" * 64  # the digest's place in the header until the data has been hashed


def _little_endian(value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # safetensors stores little-endian data; the digest covers what is stored.
    if value.dtype.byteorder == ">":
        return value.astype(value.dtype.newbyteorder("<"))
    return value


def safetensors_header(
    arrays: Mapping[str, npt.NDArray[Any]], metadata: Mapping[str, str]
) -> bytes:
    """The length-prefixed JSON header of a safetensors file whose data section holds
    ``arrays`` in name order (pure); ``metadata`` becomes its ``__metadata__``."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name in sorted(arrays):
        value = arrays[name]
        dtype = SAFETENSORS_DTYPES.get(value.dtype.name)
        if dtype is None:
            raise CheckpointError(
                f"array '{name}' has dtype {value.dtype}, which a checkpoint cannot hold; "
                f"expected one of {sorted(SAFETENSORS_DTYPES)}"
            )
        header[name] = {
            "dtype": dtype,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        offset += value.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors_durably(
    path: str | Path,
    arrays: Mapping[str, npt.NDArray[Any]],
    metadata: Mapping[str, str],
    point: str | None,
    *,
    name: str | Path,
) -> str:
    """Write a safetensors file straight from the arrays, hashing them as they are
    written, and fsync it; returns the digest, which is then written into its place in
    the header. The file is never held in memory whole (a checkpoint of a 100 MB model
    used to cost the coordinator another 100 MB of bytes for a moment every round).

    A refused write (full disk, read-only file system) is an OSError naming ``name``,
    the file the caller is replacing.
    """
    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    header = safetensors_header(arrays, {**meta, DIGEST_KEY: _PLACEHOLDER})
    slot = f'"{DIGEST_KEY}":"{_PLACEHOLDER}"'.encode()
    # Inside a JSON string every quote is escaped, so only the real entry matches.
    at = header.index(slot) + len(slot) - len(_PLACEHOLDER) - 1
    h = hashlib.sha256()
    try:
        if point is not None:
            faults.reach(point)
        with open(path, "wb") as fh:
            fh.write(header)
            for key in sorted(arrays):
                _hash_array(h, key, arrays[key])
                fh.write(_raw(arrays[key]))
            _hash_metadata(h, meta)
            digest = h.hexdigest()
            fh.seek(at)
            fh.write(digest.encode())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(name)) from exc
    return digest


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


def save_released_model(target: Path, params: FloatVector) -> str:
    """Write a run's released model (tensor ``params``) atomically, straight from the
    array and hashed as it is written (the digest in its header, as in a checkpoint), so
    releasing a large model costs no serialised copy of it; returns the digest."""
    return write_atomic_safetensors(
        target, {"params": params}, {}, prefix=f".{target.name}-", write_point=None
    )


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
