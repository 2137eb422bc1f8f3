"""Refuse, before anything is written, a study folder or site state folder that cannot be
written (read-only mount, immutable or read-only runs.db, audit log or state file).

SQLite opens a database it cannot write read-only without a word and fails at the first
write, or worse (an immutable runs.db in WAL mode ended in SIGBUS); the coordinator and the
site agent check here first and stop with a message naming the file.
"""

from __future__ import annotations

from pathlib import Path

from fedcare.core.storage import check_writable

STUDY_FILES = ("runs.db", "runs.db-wal", "runs.db-shm", "audit.log", "audit-signers.pem")
SITE_FILES = (
    "site-state.safetensors",
    "audit-copy.log",
    "approvals.json",
    "privacy-ledger.sqlite",
    "privacy-ledger.sqlite-wal",
    "privacy-ledger.sqlite-shm",
)


def check_study_folder(folder: Path) -> None:
    """StorageError naming the file if the coordinator could not write ``folder``."""
    check_writable(folder, STUDY_FILES, "the study folder")


def check_site_folder(folder: Path) -> None:
    """StorageError naming the file if a site agent could not write its ``--state``."""
    check_writable(folder, SITE_FILES, "the site's state folder")
