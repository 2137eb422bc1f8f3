"""The real data shipped inside the package, checked against its SHA256SUMS before use.

Files are read through ``importlib.resources`` so they load the same from a source tree,
a wheel or a zip. Each folder is verified once per process: a few MB of hashing is cheap,
and a silently corrupted or edited file would change every published number.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

from fedcare.core.errors import DataValidationError

SHIPPED_FOLDERS = ("heart-disease", "medmnist", "tcga-brca")


def data_folder(name: str) -> Traversable:
    """A shipped dataset folder (one of :data:`SHIPPED_FOLDERS`), verified once per process."""
    if name not in SHIPPED_FOLDERS:
        raise DataValidationError(
            "no such shipped dataset folder",
            file=name,
            expected=" or ".join(SHIPPED_FOLDERS),
            found=repr(name),
        )
    _verify_shipped(name)
    return _root().joinpath(name)


def _root() -> Traversable:
    return resources.files("fedcare.data").joinpath("files")


@functools.cache
def _verify_shipped(name: str) -> None:
    verify_folder(_root().joinpath(name), label=name)


def verify_folder(folder: Traversable, label: str) -> None:
    """Check every file listed in ``folder/SHA256SUMS`` (``sha256sum`` format)."""
    sums = folder.joinpath("SHA256SUMS")
    if not sums.is_file():
        raise DataValidationError(
            "dataset folder has no SHA256SUMS file", file=f"{label}/SHA256SUMS"
        )
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataValidationError(
                f"malformed line {number}",
                file=f"{label}/SHA256SUMS",
                expected="'<64 hex digits>  <file name>'",
                found=repr(line),
            )
        expected, filename = parts[0].lower(), parts[1].strip().lstrip("*")
        target = folder.joinpath(filename)
        if not target.is_file():
            raise DataValidationError(
                "shipped data file is missing (reinstall fedcare)", file=f"{label}/{filename}"
            )
        found = hashlib.sha256(target.read_bytes()).hexdigest()
        if found != expected:
            raise DataValidationError(
                "shipped data file does not match its checksum (reinstall fedcare)",
                file=f"{label}/{filename}",
                expected=f"sha256 {expected[:16]}…",
                found=f"sha256 {found[:16]}…",
            )
