"""The real data shipped inside the package, checked against its SHA256SUMS before use."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

from fedcare.core.errors import DataValidationError


def data_folder(name: str) -> Traversable:
    """A shipped dataset folder (``heart-disease`` or ``medmnist``), verified once per process."""
    folder = resources.files("fedcare.data").joinpath("files", name)
    _verify(name)
    return folder


@functools.cache
def _verify(name: str) -> None:
    folder = resources.files("fedcare.data").joinpath("files", name)
    sums = folder.joinpath("SHA256SUMS")
    if not sums.is_file():
        raise DataValidationError(f"shipped dataset '{name}' is missing its SHA256SUMS file")
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        expected, filename = line.split(maxsplit=1)
        target = folder.joinpath(filename.strip().lstrip("*"))
        if not target.is_file():
            raise DataValidationError("shipped data file is missing", file=f"{name}/{filename}")
        found = hashlib.sha256(target.read_bytes()).hexdigest()
        if found != expected:
            raise DataValidationError(
                "shipped data file does not match its checksum (reinstall fedcare)",
                file=f"{name}/{filename}",
                expected=expected[:16] + "…",
                found=found[:16] + "…",
            )
