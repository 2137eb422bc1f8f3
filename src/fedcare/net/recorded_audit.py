"""The coordinator's audit log, with its head recorded in the run store after each append.

An audit log is append-only, but a file can still lose its tail (a restored backup, a
truncation, entries cut by hand); the hash chain alone cannot tell a log cut after entry
n from one that only ever had n entries. The run store therefore keeps, per log file, the
number of entries and the hash of the last one, written right after each append, or
after the last append of a batch (the entries are fsynced first, so the log may be
ahead of the store after a crash, never behind). :mod:`fedcare.net.audit_crosscheck`
compares the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.net.store import RunStore
from fedcare.runtime.audit import AuditEntry, AuditLog


class RecordedAuditLog(AuditLog):
    """An :class:`AuditLog` whose every append also records the new head in ``store``."""

    def __init__(self, path: Path, store: RunStore) -> None:
        super().__init__(path)
        self.store = store
        self._last: AuditEntry | None = None  # appended in the open batch, head not recorded

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._batch is not None:  # joins the open batch
            yield
            return
        self._last = None
        with super().batch():
            yield
        last, self._last = self._last, None
        if last is not None:  # durable now: the store may record it as the head
            self.store.record_audit_head(self.path.name, last.index + 1, last.hash)

    def append(
        self,
        kind: str,
        author: str,
        body: Mapping[str, Any],
        signing_key: Ed25519PrivateKey,
        *,
        time: str | None = None,
    ) -> AuditEntry:
        with self.batch():
            entry = super().append(kind, author, body, signing_key, time=time)
            self._last = entry
        return entry
