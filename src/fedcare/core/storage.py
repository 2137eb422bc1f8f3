"""Writes that the disk refuses: a full disk, a read-only or immutable file, a failing device.

A coordinator or site agent that cannot make a fact durable must stop, not carry on with
the fact in memory only. :func:`storage_failure` recognises such an error wherever it
surfaced (an ``OSError`` from a file write, or SQLite's "database or disk is full" /
"attempt to write a readonly database" wrapped by the run store) and turns it into one
:class:`StorageError` that names the file, what was being written, why it failed and
how much space is left. :func:`check_writable` refuses a folder before anything starts.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fedcare.core.errors import FedcareError

# errno -> what it means for the person who has to fix it.
_ERRNO: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is mounted read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the file cannot be changed (immutable, e.g. chattr +i, or not permitted)",
    errno.EIO: "the device reported an input/output error",
}
# SQLite's primary result codes (extended ones start with these names) -> errno.
_SQLITE: dict[str, int] = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_IOERR": errno.EIO,
    "SQLITE_CANTOPEN": errno.EACCES,
    "SQLITE_PERM": errno.EPERM,
}


class StorageError(FedcareError):
    """A write the process depends on failed because of the storage under it."""

    def __init__(self, path: Path | None, action: str, code: int, detail: str = "") -> None:
        self.path = path
        self.action = action
        self.errno = code
        self.reason = _ERRNO.get(code, os.strerror(code))
        self.free_bytes = free_bytes(path) if path is not None else None
        self.detail = detail
        where = f" '{path}'" if path is not None else ""
        free = "" if self.free_bytes is None else f" ({_size(self.free_bytes)} free there)"
        super().__init__(f"cannot {action}{where}: {self.reason}{free}; {self.remedy()}")

    @property
    def full(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

    def remedy(self) -> str:
        """What the person at the machine does about it."""
        folder = self.path.parent if self.path is not None else "its folder"
        if self.full:
            return f"free space on the file system of '{folder}' to continue"
        return (
            f"make '{self.path or folder}' writable (mount it read-write, chmod u+w, "
            "chattr -i) to continue"
        )


def free_bytes(path: Path) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (None if unknown)."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)  # SQLAlchemy keeps the driver's error here
        todo += [
            item.__cause__,
            item.__context__,
            orig if isinstance(orig, BaseException) else None,
        ]


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, StorageError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return exc.errno
    if isinstance(exc, sqlite3.Error):
        name = str(getattr(exc, "sqlite_errorname", ""))
        for prefix, code in _SQLITE.items():
            if name.startswith(prefix):
                return code
        text = str(exc).lower()  # drivers that do not carry the result code
        if "disk is full" in text:
            return errno.ENOSPC
        if "readonly database" in text:
            return errno.EROFS
        if "disk i/o error" in text:
            return errno.EIO
    return None


def storage_failure(
    exc: BaseException, path: Path | None = None, action: str = "write"
) -> StorageError | None:
    """``exc`` as a StorageError if the storage caused it, else None (a bug: re-raise it).

    The file is the one the error names (``OSError.filename``, or the failure's own path),
    else ``path``."""
    for item in _causes(exc):
        if isinstance(item, StorageError):
            return item
        code = _code(item)
        if code is not None:
            named = getattr(item, "filename", None)
            return StorageError(Path(named) if named else path, action, code, str(item))
    return None


def check_writable(folder: Path, files: Iterable[str], what: str) -> None:
    """Refuse, before anything is written, a ``folder`` (or one of its existing ``files``)
    that cannot be written: read-only mount, immutable or read-only file, no permission.

    ``what`` names the folder for the message (e.g. "the study folder")."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fedcare-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        failure = storage_failure(exc, folder, f"write in {what}")
        if failure is None:
            raise
        raise StorageError(folder, f"write in {what}", failure.errno) from exc
    for name in files:
        path = folder / name
        if not path.exists():
            continue
        try:
            if not os.access(path, os.W_OK):  # catches chattr +i even for root
                raise PermissionError(errno.EACCES, "not writable", str(path))
            os.close(os.open(path, os.O_RDWR))
        except OSError as exc:
            code = exc.errno if exc.errno in _ERRNO else errno.EACCES
            if path.is_file() and _immutable(path):
                code = errno.EPERM
            raise StorageError(path, f"write {what}'s {name}", code) from exc


def _immutable(path: Path) -> bool:
    """Whether writing is refused although the mode allows it (chattr +i, for example)."""
    mode = path.stat().st_mode
    return bool(mode & 0o200) and not os.access(path, os.W_OK)


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
