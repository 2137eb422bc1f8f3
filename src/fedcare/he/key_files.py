"""The CKKS key set the hospitals share, on disk.

One hospital creates it (``fedcare site he-keys create``) and hands the file to the
others the way they exchange any study secret; the coordinator never receives it. The
file holds the TenSEAL context with its secret key, framed with the key id, and is
created readable by its owner only and never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedcare.core.errors import ConfigError, FedcareError
from fedcare.he.ckks import CkksKeys, load_secret_context, secret_context_bytes
from fedcare.he.params import CkksParams


def write_key_set(path: Path, keys: CkksKeys) -> None:
    """Create ``path`` (mode 0600) with the key set; refuses to replace an existing file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"'{path}' already exists; a key set is never overwritten (the sites holding it "
            "could no longer decrypt); choose another file"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret_context_bytes(keys))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_set(path: Path) -> CkksKeys:
    """Load a key set written by :func:`write_key_set`; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the CKKS key set '{path}': {exc.strerror}") from None
    try:
        return load_secret_context(data, CkksParams())
    except FedcareError as exc:
        raise ConfigError(f"'{path}' is not a CKKS key set with its secret key: {exc}") from exc
