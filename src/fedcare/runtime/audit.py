"""Append-only, hash-chained, signed audit log of what happened to the sites' data.

Each entry (job submitted, plan approved by a site, round started, update contributed with
its hash, model released) is one JSON line: index, time, kind, author, body, the hash of the
previous entry, its own hash (SHA-256 over all of that) and the author's Ed25519 signature
of that hash. Entries are appended under a file lock and fsynced.

``verify`` re-derives every hash and signature and checks the chain, naming the entry index
of each problem: edited (content no longer matches its hash), forged (signature does not
verify), unknown author, removed (index gap or broken link), reordered, duplicated. Removing
entries from the end of a chain cannot be seen from the chain itself: pass the head the
verifier expects, or compare with a site's copy (``SiteAuditCopy``), which keeps the
coordinator's own signed entries that concern that site and verifies the same way.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedcare.core import faults
from fedcare.core.errors import FedcareError, ProtocolError
from fedcare.runtime.approvals import canonical, canonical_json

APPEND_POINT = faults.declare(
    "coordinator.audit.append",
    "an audit entry is about to be written to audit.log: it is not in the log yet",
)
COPY_POINT = faults.declare(
    "site.audit.append",
    "an entry is about to be written to the site's audit copy: it is not in the copy yet",
)

GENESIS = "0" * 64
_DOMAIN = b"fedcare-audit-v1\n"
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FIELDS = ("index", "time", "kind", "author", "body", "prev_hash", "hash", "signature")

# Entry kinds the deployed runtime writes (any lowercase identifier is accepted).
JOB_SUBMITTED = "job_submitted"
PLAN_APPROVED = "plan_approved"
ROUND_STARTED = "round_started"
UPDATE_CONTRIBUTED = "update_contributed"
UPDATE_REJECTED = "update_rejected"
SITE_DROPPED = "site_dropped"
ROUND_FINISHED = "round_finished"
MODEL_RELEASED = "model_released"

PublicKeys = Mapping[str, Ed25519PublicKey | Sequence[Ed25519PublicKey]]
ProblemKind = Literal[
    "unreadable",
    "edited",
    "bad_signature",
    "unknown_author",
    "removed",
    "reordered",
    "duplicate",
    "chain_broken",
    "truncated",
    "not_concerned",
    "differs",
    "missing",
]


class AuditError(FedcareError):
    """The audit log cannot be appended to or read (not: it was tampered with; that is
    what :func:`verify` reports)."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def entry_hash(
    index: int, time: str, kind: str, author: str, body: Mapping[str, Any], prev_hash: str
) -> str:
    """SHA-256 over the canonical JSON of everything in an entry except hash and signature."""
    content = {
        "index": index,
        "time": time,
        "kind": kind,
        "author": author,
        "body": body,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_DOMAIN + canonical_json(content, "audit entry")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    index: int
    time: str
    kind: str
    author: str
    body: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str  # hex Ed25519 signature of the 32-byte hash

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> AuditEntry:
        """Parse an entry (from a file line or a message), checking field types only."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ProtocolError(f"audit entry must have fields {list(_FIELDS)}, found {found}")
        types = {"index": int, "body": dict}
        for name in _FIELDS:
            expected = types.get(name, str)
            if not isinstance(data[name], expected) or isinstance(data[name], bool):
                raise ProtocolError(
                    f"audit entry field '{name}' must be {expected.__name__}, "
                    f"found {type(data[name]).__name__}"
                )
        return cls(**{name: data[name] for name in _FIELDS})

    def content_hash(self) -> str:
        return entry_hash(self.index, self.time, self.kind, self.author, self.body, self.prev_hash)

    def signature_valid(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(bytes.fromhex(self.signature), bytes.fromhex(self.hash))
        except (InvalidSignature, ValueError):
            return False
        return True

    def concerns(self, site: str) -> bool:
        """Whether a site should keep this entry: it wrote it, it is named in ``site`` or
        ``sites``, or the entry is a broadcast (e.g. a released model)."""
        body = self.body
        sites = body.get("sites")
        return (
            self.author == site
            or body.get("site") == site
            or (isinstance(sites, list) and site in sites)
            or body.get("broadcast") is True
        )


def _keys_for(keys: PublicKeys, author: str) -> list[Ed25519PublicKey] | None:
    found = keys.get(author)
    if found is None:
        return None
    return [found] if isinstance(found, Ed25519PublicKey) else list(found)


# -- writing -----------------------------------------------------------------------------


def _last_line(fh: Any) -> tuple[bytes, int]:
    """The last newline-terminated line of a binary file and the offset just after it
    (anything after it is a torn write)."""
    end = fh.seek(0, os.SEEK_END)
    block = 4096
    data = b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        last_nl = data.rfind(b"\n")
        if last_nl == -1:
            continue
        prev_nl = data.rfind(b"\n", 0, last_nl)
        if prev_nl != -1 or pos == 0:
            return data[prev_nl + 1 : last_nl], pos + last_nl + 1
    return b"", 0


def _append_line(fh: Any, line: bytes, path: Path, point: str, *, sync: bool = True) -> None:
    """Write one entry line and fsync it (``sync``); if the disk refuses (full, read-only),
    cut the file back to where it was, so a failed append leaves no torn line, and re-raise
    the error naming the file."""
    end = fh.seek(0, os.SEEK_END)
    try:
        faults.reach(point)
        view = memoryview(line)
        while view:  # unbuffered, so nothing half-written is left to flush on close
            view = view[os.write(fh.fileno(), view) :]
        if sync:
            os.fsync(fh.fileno())
    except OSError as exc:
        _cut_back(fh, end)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _cut_back(fh: Any, end: int) -> None:
    with contextlib.suppress(OSError):  # shrinking a file needs no space
        fh.truncate(end)
        os.fsync(fh.fileno())


@dataclass
class _Batch:
    """Appends that share one open, locked file and one fsync (see ``AuditLog.batch``).
    The file is opened at the batch's first append: a step that appends nothing (most
    of a driver's timer ticks) costs no open, lock or read of the log's tail."""

    files: contextlib.ExitStack
    fh: Any = None  # None until the first append
    start: int = 0  # the file's end when it was opened
    index: int = 0  # of the next entry
    prev: str = GENESIS  # hash of the last entry
    written: bool = False


class AuditLog:
    """The coordinator's (or a site's own) audit log: one chain, one JSON entry per line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repaired_bytes = 0  # bytes of a torn final write discarded by the last append
        self._batch: _Batch | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Appends inside share one open file, one lock and one fsync when the batch ends.

        For a writer that sends nothing before the batch is over (the coordinator driver
        persists every event of a step, then sends), each entry is still durable before
        anything that depends on it leaves; a process killed inside the batch leaves the
        entries written so far in order (the OS holds them), never a torn line. Nested
        batches join the outer one.
        """
        if self._batch is not None:
            yield
            return
        with contextlib.ExitStack() as files:  # closes (and unlocks) the file last
            batch = self._batch = _Batch(files)
            try:
                yield
            finally:
                self._batch = None
                if batch.written:
                    try:
                        os.fsync(batch.fh.fileno())
                    except OSError as exc:  # not durable: not in the log
                        _cut_back(batch.fh, batch.start)
                        raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _opened(self, batch: _Batch) -> Any:
        """The batch's locked file, opened (and its torn tail cut) at the first append."""
        if batch.fh is None:
            fh = batch.files.enter_context(self._locked())
            batch.index, batch.prev = self._tail(fh)
            batch.start, batch.fh = fh.seek(0, os.SEEK_END), fh
        return batch.fh

    def _tail(self, fh: Any) -> tuple[int, str]:
        """(index of the next entry, hash of the last one); a torn final write (a crash
        in the middle of an append, never acknowledged) is cut off first."""
        line, good_end = _last_line(fh)
        end = fh.seek(0, os.SEEK_END)
        if good_end < end:
            self.repaired_bytes = end - good_end
            fh.truncate(good_end)
        if not line:
            return 0, GENESIS
        try:
            last = AuditEntry.from_dict(json.loads(line))
        except (ValueError, ProtocolError) as exc:
            raise AuditError(
                f"audit log '{self.path}': the last entry is unreadable ({exc}); "
                "run 'fedcare audit verify' before appending"
            ) from exc
        return last.index + 1, last.hash

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh

    def append(
        self,
        kind: str,
        author: str,
        body: Mapping[str, Any],
        signing_key: Ed25519PrivateKey,
        *,
        time: str | None = None,
    ) -> AuditEntry:
        """Append one signed entry and fsync it before returning (inside :meth:`batch`:
        when the batch ends)."""
        if not _KIND.match(kind):
            raise AuditError(f"audit entry kind must be a lowercase identifier, found {kind!r}")
        if not author:
            raise AuditError("an audit entry needs an author")
        clean = canonical(dict(body), f"audit entry '{kind}' body")
        with self.batch():
            batch = self._batch
            assert batch is not None  # set by batch() for as long as it lasts
            fh = self._opened(batch)
            stamp = time or _now()
            digest = entry_hash(batch.index, stamp, kind, author, clean, batch.prev)
            signature = signing_key.sign(bytes.fromhex(digest)).hex()
            entry = AuditEntry(
                batch.index, stamp, kind, author, clean, batch.prev, digest, signature
            )
            line = entry.to_json().encode() + b"\n"
            _append_line(fh, line, self.path, APPEND_POINT, sync=False)
            batch.index, batch.prev, batch.written = entry.index + 1, entry.hash, True
        return entry

    def entries(self) -> list[AuditEntry]:
        """Every readable entry in file order (use :func:`verify` to check them)."""
        return [entry for _, entry in _read(self.path)[0]]

    def entries_concerning(self, site: str) -> list[AuditEntry]:
        return [e for e in self.entries() if e.concerns(site)]

    def head(self) -> str:
        """Hash of the last entry (GENESIS when empty): hand it to a verifier to detect
        entries removed from the end."""
        entries = self.entries()
        return entries[-1].hash if entries else GENESIS


class SiteAuditCopy:
    """A site's own copy of the coordinator's entries that concern it, kept verbatim.

    The site checks each entry's hash and signature before storing it, so its copy can
    later prove what the coordinator's log said (``compare``)."""

    def __init__(self, path: Path, site: str) -> None:
        self.path = Path(path)
        self.site = site
        self.unsynced = False  # entries added with sync=False and not fsynced yet

    def add(
        self,
        entry: AuditEntry | Mapping[str, Any],
        public_keys: PublicKeys,
        *,
        sync: bool = True,
    ) -> AuditEntry:
        """Store one entry received from the coordinator after checking it; fsync it
        before returning, or (``sync=False``) at the next :meth:`sync`, which a site agent
        calls before it sends anything, so entries that arrive together share one fsync."""
        entry = entry if isinstance(entry, AuditEntry) else AuditEntry.from_dict(dict(entry))
        if entry.content_hash() != entry.hash:
            raise ProtocolError(f"audit entry {entry.index} does not match its hash")
        keys = _keys_for(public_keys, entry.author)
        if not keys or not any(entry.signature_valid(k) for k in keys):
            raise ProtocolError(
                f"audit entry {entry.index} is not signed by a known key of {entry.author!r}"
            )
        if not entry.concerns(self.site):
            raise ProtocolError(f"audit entry {entry.index} does not concern site {self.site!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            line, good_end = _last_line(fh)
            fh.truncate(good_end)
            if line:
                last = AuditEntry.from_dict(json.loads(line))
                if entry.index <= last.index:
                    held = {e.index: e.hash for _, e in _read(self.path)[0]}
                    if held.get(entry.index) == entry.hash:
                        return entry  # delivered again after a reconnect: kept once
                    raise ProtocolError(
                        f"audit entry {entry.index} arrived after entry {last.index}; "
                        "the coordinator re-sent or reordered its log"
                    )
            line = entry.to_json().encode() + b"\n"
            _append_line(fh, line, self.path, COPY_POINT, sync=sync)
            self.unsynced = not sync  # an fsync covers the earlier entries too
        return entry

    def sync(self) -> None:
        """Make the entries added with ``sync=False`` durable (one fsync for all of them)."""
        if not self.unsynced:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        finally:
            os.close(fd)
        self.unsynced = False

    def entries(self) -> list[AuditEntry]:
        return [entry for _, entry in _read(self.path)[0]]


# -- verifying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditProblem:
    kind: ProblemKind
    index: int | None  # the entry concerned (None when a line could not be read at all)
    line: int | None  # 1-based line in the file
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class AuditReport:
    path: Path
    entries: int = 0
    head: str = GENESIS
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def indices(self, kind: ProblemKind | None = None) -> list[int]:
        """Entry indices with a problem (of ``kind``), for tests and tools."""
        return [
            p.index
            for p in self.problems
            if p.index is not None and (kind is None or p.kind == kind)
        ]

    def summary(self) -> str:
        if self.ok:
            return f"{self.path}: {self.entries} entries, chain intact, head {self.head[:16]}"
        return (
            f"{self.path}: {len(self.problems)} problem(s) in {self.entries} entries\n"
            + "\n".join(f"  - {p.message}" for p in self.problems)
        )


def _read(path: Path) -> tuple[list[tuple[int, AuditEntry]], list[AuditProblem]]:
    if not Path(path).exists():
        raise AuditError(f"audit log '{path}' does not exist")
    rows: list[tuple[int, AuditEntry]] = []
    problems: list[AuditProblem] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rows.append((number, AuditEntry.from_dict(json.loads(raw))))
            except (ValueError, ProtocolError) as exc:
                problems.append(
                    AuditProblem(
                        "unreadable", None, number, f"line {number} is not an audit entry: {exc}"
                    )
                )
    return rows, problems


def _out_of_order(indices: list[int]) -> set[int]:
    """Positions outside one longest strictly increasing subsequence: the moved entries."""
    tails: list[int] = []
    tail_pos: list[int] = []
    parent = [-1] * len(indices)
    for pos, value in enumerate(indices):
        at = bisect.bisect_left(tails, value)
        if at == len(tails):
            tails.append(value)
            tail_pos.append(pos)
        else:
            tails[at] = value
            tail_pos[at] = pos
        parent[pos] = tail_pos[at - 1] if at > 0 else -1
    keep: set[int] = set()
    pos = tail_pos[-1] if tail_pos else -1
    while pos != -1:
        keep.add(pos)
        pos = parent[pos]
    return set(range(len(indices))) - keep


def _ranges(values: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def verify(
    path: Path,
    public_keys: PublicKeys,
    *,
    partial: bool = False,
    expect_head: str | None = None,
) -> AuditReport:
    """Check every entry of an audit log and name each problem by entry index.

    ``partial=True`` verifies a site's copy (a subsequence of the chain: gaps are expected,
    links are checked between consecutive entries). ``expect_head`` is the hash the last
    entry must have, to detect entries removed from the end.
    """
    path = Path(path)
    rows, problems = _read(path)
    report = AuditReport(path, entries=len(rows))
    intact: dict[int, AuditEntry] = {}  # index -> entry whose hash and signature hold

    for line, entry in rows:
        i = entry.index
        if entry.content_hash() != entry.hash:
            problems.append(
                AuditProblem(
                    "edited",
                    i,
                    line,
                    f"entry {i} (line {line}, {entry.kind}) was edited: its content no longer matches its hash",
                )
            )
            continue
        keys = _keys_for(public_keys, entry.author)
        if keys is None:
            problems.append(
                AuditProblem(
                    "unknown_author",
                    i,
                    line,
                    f"entry {i} (line {line}) is signed by unknown author {entry.author!r}",
                )
            )
            continue
        if not any(entry.signature_valid(k) for k in keys):
            problems.append(
                AuditProblem(
                    "bad_signature",
                    i,
                    line,
                    f"entry {i} (line {line}, {entry.kind}): signature does not verify with {entry.author!r}'s key (forged, or edited and re-hashed)",
                )
            )
            continue
        intact.setdefault(i, entry)

    order = [entry.index for _, entry in rows]
    seen: set[int] = set()
    for line, entry in rows:
        if entry.index in seen:
            problems.append(
                AuditProblem(
                    "duplicate",
                    entry.index,
                    line,
                    f"entry {entry.index} appears again at line {line}",
                )
            )
        seen.add(entry.index)
    first_at: dict[int, int] = {}
    for pos, idx in enumerate(order):
        first_at.setdefault(idx, pos)
    unique = [(pos, idx) for idx, pos in sorted(first_at.items(), key=lambda item: item[1])]
    moved = _out_of_order([idx for _, idx in unique])
    for k in sorted(moved):
        pos, idx = unique[k]
        line = rows[pos][0]
        problems.append(
            AuditProblem(
                "reordered", idx, line, f"entry {idx} is out of order (found at line {line})"
            )
        )

    if not partial and seen:
        for lo, hi in _ranges(sorted(set(range(max(seen) + 1)) - seen)):
            what = f"entry {lo} was" if lo == hi else f"entries {lo}-{hi} were"
            problems.append(
                AuditProblem(
                    "removed",
                    lo,
                    None,
                    f"{what} removed (the chain skips from {lo - 1} to {hi + 1})"
                    if lo
                    else f"{what} removed from the start of the log",
                )
            )
        first = intact.get(0)
        if first is not None and first.prev_hash != GENESIS:
            problems.append(
                AuditProblem(
                    "chain_broken",
                    0,
                    None,
                    "entry 0 does not start a chain (its prev_hash is not the genesis value)",
                )
            )

    for i in sorted(intact):
        entry = intact[i]
        before = intact.get(i - 1)
        if before is not None and entry.prev_hash != before.hash:
            problems.append(
                AuditProblem(
                    "chain_broken",
                    i,
                    None,
                    f"entry {i} does not follow entry {i - 1}: one of them was replaced by a re-signed entry",
                )
            )

    if rows:
        last = max((e for _, e in rows), key=lambda e: e.index)
        report.head = last.hash
        if expect_head is not None and last.hash != expect_head:
            earlier = next((e for _, e in rows if e.hash == expect_head), None)
            if earlier is not None:
                problems.append(
                    AuditProblem(
                        "truncated",
                        earlier.index,
                        None,
                        f"entries were appended after the expected head (entry {earlier.index})",
                    )
                )
            else:
                problems.append(
                    AuditProblem(
                        "truncated",
                        last.index + 1,
                        None,
                        f"the expected head {expect_head[:16]} is not in the log: entries after {last.index} were removed or the log was rewritten",
                    )
                )
    elif expect_head is not None and expect_head != GENESIS:
        problems.append(
            AuditProblem("truncated", 0, None, "the log is empty but entries were expected")
        )

    problems.sort(key=lambda p: (p.index if p.index is not None else -1, p.line or 0))
    report.problems = problems
    return report


def compare(log_path: Path, copy_path: Path, site: str) -> list[AuditProblem]:
    """Entries a site's copy holds that the coordinator's log no longer has, or has
    differently: proof that the log was rewritten after the fact."""
    log = {e.index: e for _, e in _read(log_path)[0]}
    problems = []
    for line, entry in _read(copy_path)[0]:
        mine = log.get(entry.index)
        if mine is None:
            problems.append(
                AuditProblem(
                    "removed",
                    entry.index,
                    line,
                    f"entry {entry.index} ({entry.kind}) held by site {site!r} is missing from the log",
                )
            )
        elif mine.hash != entry.hash:
            problems.append(
                AuditProblem(
                    "differs",
                    entry.index,
                    line,
                    f"entry {entry.index} differs from the copy held by site {site!r}: the log was rewritten",
                )
            )
    return problems
