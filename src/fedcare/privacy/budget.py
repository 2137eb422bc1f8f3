"""A site's persistent privacy-budget ledger for one dataset (stdlib sqlite3, WAL mode).

Every job that touches the dataset charges the ledger; the ledger refuses a job that
cannot fit and a step that would overrun the budget *before* the step is taken.

Composition across jobs uses the basic composition theorem: the dataset has spent the sum
of each job's epsilon and the sum of each job's delta. This is conservative (advanced or
RDP composition across jobs would be tighter), and it is valid whatever accountant each
job used. Within a job, a charge is the job's *cumulative* spend so far (its accountant's
current epsilon), so a DP-SGD job is not over-charged step by step.

Entries are append-only and hash-chained (SHA-256 over the previous hash and the entry).
The whole chain is checked on open; every later read or write checks the entries added
since and that the newest entry it had verified is unchanged. An edited, deleted or
reordered entry, or a file that is not a ledger, raises :class:`LedgerIntegrityError`;
nothing is ever reset silently. (The chain catches accidents and naive edits; it is unkeyed, so a
determined administrator could rewrite it whole, and dropping the newest entries is
undetectable without an external copy of the head hash, see :meth:`BudgetLedger.head`.)
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from fedcare.core.closing import Closing
from fedcare.core.errors import ConfigError, FedcareError, PrivacyBudgetExceededError, ProtocolError

_GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    time TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS entries_by_job ON entries (dataset, kind, job_id)"
_COLUMNS = "id, dataset, kind, job_id, plan_hash, epsilon, delta, time, prev_hash, hash"


class LedgerIntegrityError(FedcareError):
    """The ledger file is corrupted or was edited outside fedcare."""


@dataclass(frozen=True)
class PrivacyBudget:
    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(
                f"privacy budget epsilon must be finite and > 0, found {self.epsilon}"
            )
        if not (0 <= self.delta < 1):
            raise ConfigError(f"privacy budget delta must be in [0, 1), found {self.delta}")


@dataclass(frozen=True)
class JobRef:
    """A job as the site approved it: its id and the hash of its plan."""

    job_id: str
    plan_hash: str

    def __post_init__(self) -> None:
        if not self.job_id or not self.plan_hash:
            raise ConfigError("a job needs a non-empty job_id and plan_hash")


@dataclass(frozen=True)
class Entry:
    """One ledger line: a budget setting or a job's cumulative spend."""

    id: int
    dataset: str
    kind: str  # "budget" or "charge"
    job_id: str
    plan_hash: str
    epsilon: float
    delta: float
    time: str
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        return _entry_hash(
            self.prev_hash,
            self.dataset,
            self.kind,
            self.job_id,
            self.plan_hash,
            self.epsilon,
            self.delta,
            self.time,
        )


def _entry_hash(
    prev_hash: str,
    dataset: str,
    kind: str,
    job_id: str,
    plan_hash: str,
    epsilon: float,
    delta: float,
    time: str,
) -> str:
    body = json.dumps(
        [prev_hash, dataset, kind, job_id, plan_hash, float.hex(epsilon), float.hex(delta), time]
    )
    return hashlib.sha256(body.encode()).hexdigest()


class BudgetLedger(Closing):
    """The privacy ledger of one dataset at one site; one sqlite file may hold many datasets.

    Open with ``budget`` the first time; later opens read the recorded budget (passing a
    different one is an error: raise a budget deliberately with :meth:`set_budget`).
    Safe for several processes at once: every check-and-write is one IMMEDIATE transaction.
    """

    def __init__(
        self, path: str | Path, *, site: str, dataset: str, budget: PrivacyBudget | None = None
    ) -> None:
        self.path = Path(path)
        self.site = site
        self.dataset = dataset
        self._verified = (0, _GENESIS)  # (last verified id, its hash)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute(_INDEX)
        except sqlite3.DatabaseError as exc:
            raise LedgerIntegrityError(
                f"site '{site}': privacy ledger '{self.path}' is not a readable ledger ({exc}); "
                "restore it from the site's backup or audit copy; it is never reset automatically"
            ) from exc
        with self._transaction():
            recorded = self._budget_locked()
            if recorded is None:
                if budget is None:
                    raise ConfigError(
                        f"site '{site}': ledger '{self.path}' has no budget for dataset "
                        f"'{dataset}'; pass budget= the first time the dataset is opened"
                    )
                self._append_locked("budget", "", "", budget.epsilon, budget.delta)
            elif budget is not None and budget != recorded:
                raise ConfigError(
                    f"site '{site}', dataset '{dataset}': the ledger records budget "
                    f"epsilon={recorded.epsilon}, delta={recorded.delta} but "
                    f"epsilon={budget.epsilon}, delta={budget.delta} was passed; "
                    "change a budget only with set_budget()"
                )

    # -- reading ------------------------------------------------------------------------
    @property
    def budget(self) -> PrivacyBudget:
        with self._transaction(write=False):
            recorded = self._budget_locked()
        if recorded is None:  # only if the budget entry was deleted behind our back
            raise self._tampered(f"the budget of dataset '{self.dataset}' is gone")
        return recorded

    def entries(self) -> list[Entry]:
        """This dataset's entries, oldest first."""
        with self._transaction(write=False):
            return [e for e in self._entries_locked() if e.dataset == self.dataset]

    def job_spend(self) -> dict[str, tuple[float, float]]:
        """Each job's latest cumulative (epsilon, delta) on this dataset."""
        with self._transaction(write=False):
            return self._job_spend_locked()

    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) spent by every job so far, by basic composition."""
        with self._transaction(write=False):
            return _sum_spend(self._job_spend_locked())

    def remaining(self) -> tuple[float, float]:
        budget = self.budget
        eps, delta = self.spent()
        return budget.epsilon - eps, budget.delta - delta

    def head(self) -> str:
        """Hash of the newest entry: keep a copy elsewhere to detect a truncated ledger."""
        with self._transaction(write=False):
            return self._verified[1]

    # -- writing ------------------------------------------------------------------------
    def check_can_start(self, job: JobRef, planned_epsilon: float, planned_delta: float) -> None:
        """Raise PrivacyBudgetExceededError unless the job's whole plan fits the budget."""
        _check_amount(planned_epsilon, planned_delta)
        with self._transaction(write=False):
            self._refuse_if_over_locked(job, planned_epsilon, planned_delta, "plans to spend")

    def charge(self, job: JobRef, epsilon: float, delta: float) -> Entry:
        """Record that ``job`` has now spent ``(epsilon, delta)`` in total on this dataset.

        Call it *before* the step that brings the job to that spend (ask the accountant
        with ``epsilon_if``): if the new total would exceed the budget, nothing is written
        and PrivacyBudgetExceededError is raised, so the step is never taken.
        """
        _check_amount(epsilon, delta)
        with self._transaction():
            previous = self._job_spend_locked().get(job.job_id)
            if previous is not None and (epsilon < previous[0] or delta < previous[1]):
                raise ProtocolError(
                    f"site '{self.site}', dataset '{self.dataset}', job '{job.job_id}': charges "
                    f"are cumulative and cannot decrease (recorded epsilon={previous[0]}, "
                    f"delta={previous[1]}; found epsilon={epsilon}, delta={delta})"
                )
            self._check_plan_locked(job)
            self._refuse_if_over_locked(job, epsilon, delta, "would bring its spend to")
            return self._append_locked("charge", job.job_id, job.plan_hash, epsilon, delta)

    def set_budget(self, budget: PrivacyBudget) -> None:
        """Record a new budget for the dataset (an explicit, audited decision)."""
        with self._transaction():
            self._append_locked("budget", "", "", budget.epsilon, budget.delta)

    def close(self) -> None:
        self._db.close()

    # -- internals (call inside a transaction) -------------------------------------------
    def _transaction(self, write: bool = True) -> _Transaction:
        return _Transaction(self, write)

    def _rows(self, where: str = "", params: tuple[object, ...] = ()) -> list[Entry]:
        try:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries {where} ORDER BY id", params
            ).fetchall()
            return [Entry(*row) for row in rows]
        except (sqlite3.DatabaseError, TypeError) as exc:
            raise self._tampered(f"its entries cannot be read ({exc})") from exc

    def _entries_locked(self) -> list[Entry]:
        """All entries of the file, with the whole hash chain verified."""
        entries = self._rows()
        self._verify_chain(entries, 0, _GENESIS)
        return entries

    def _verify_locked(self) -> None:
        """Verify entries appended since the last check, and that the last entry we
        verified is still there unchanged (the full chain is checked on open)."""
        verified_id, verified_hash = self._verified
        if verified_id:
            seen = self._rows("WHERE id = ?", (verified_id,))
            if (
                not seen
                or seen[0].hash != verified_hash
                or seen[0].expected_hash() != verified_hash
            ):
                raise self._tampered(f"entry {verified_id}, verified earlier, is gone or changed")
        self._verify_chain(self._rows("WHERE id > ?", (verified_id,)), verified_id, verified_hash)

    def _verify_chain(self, entries: list[Entry], last_id: int, last_hash: str) -> None:
        for entry in entries:
            if entry.prev_hash != last_hash or entry.hash != entry.expected_hash():
                raise self._tampered(f"entry {entry.id} does not match the hash chain")
            last_id, last_hash = entry.id, entry.hash
        self._verified = (last_id, last_hash)

    def _tampered(self, detail: str) -> LedgerIntegrityError:
        return LedgerIntegrityError(
            f"site '{self.site}': privacy ledger '{self.path}' failed its integrity check: "
            f"{detail}. It may have been edited outside fedcare; restore it from the site's "
            "backup or audit copy. fedcare never resets a ledger."
        )

    def _budget_locked(self) -> PrivacyBudget | None:
        rows = self._db.execute(
            "SELECT epsilon, delta FROM entries WHERE dataset = ? AND kind = 'budget' "
            "ORDER BY id DESC LIMIT 1",
            (self.dataset,),
        ).fetchall()
        return PrivacyBudget(*rows[0]) if rows else None

    def _job_spend_locked(self) -> dict[str, tuple[float, float]]:
        rows = self._db.execute(
            "SELECT job_id, epsilon, delta FROM entries WHERE id IN (SELECT MAX(id) FROM "
            "entries WHERE dataset = ? AND kind = 'charge' GROUP BY job_id)",
            (self.dataset,),
        ).fetchall()
        return {str(job): (float(eps), float(delta)) for job, eps, delta in rows}

    def _check_plan_locked(self, job: JobRef) -> None:
        row = self._db.execute(
            "SELECT plan_hash FROM entries WHERE dataset = ? AND job_id = ? AND kind = 'charge' "
            "ORDER BY id LIMIT 1",
            (self.dataset, job.job_id),
        ).fetchone()
        if row is not None and row[0] != job.plan_hash:
            raise ProtocolError(
                f"site '{self.site}', dataset '{self.dataset}': job '{job.job_id}' was "
                f"approved with plan {row[0]} but charges with plan {job.plan_hash}"
            )

    def _refuse_if_over_locked(self, job: JobRef, epsilon: float, delta: float, verb: str) -> None:
        budget = self._budget_locked()
        if budget is None:
            raise self._tampered(f"the budget of dataset '{self.dataset}' is gone")
        spend = self._job_spend_locked()
        spent_eps, spent_delta = _sum_spend(spend)
        other_eps, other_delta = _sum_spend({k: v for k, v in spend.items() if k != job.job_id})
        if other_eps + epsilon > budget.epsilon or other_delta + delta > budget.delta:
            raise PrivacyBudgetExceededError(
                f"site '{self.site}', dataset '{self.dataset}': job '{job.job_id}' {verb} "
                f"epsilon={epsilon:.6g}, delta={delta:.3g}; budget epsilon={budget.epsilon:.6g}, "
                f"delta={budget.delta:.3g}; spent epsilon={spent_eps:.6g}, "
                f"delta={spent_delta:.3g}; remaining epsilon={budget.epsilon - spent_eps:.6g}, "
                f"delta={budget.delta - spent_delta:.3g}"
            )

    def _append_locked(
        self, kind: str, job_id: str, plan_hash: str, epsilon: float, delta: float
    ) -> Entry:
        prev = self._verified[1]  # _Transaction verified the chain up to the newest entry
        now = datetime.now(UTC).isoformat()
        digest = _entry_hash(prev, self.dataset, kind, job_id, plan_hash, epsilon, delta, now)
        cursor = self._db.execute(
            "INSERT INTO entries (dataset, kind, job_id, plan_hash, epsilon, delta, time, "
            "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.dataset, kind, job_id, plan_hash, epsilon, delta, now, prev, digest),
        )
        entry_id = int(cursor.lastrowid or 0)
        self._verified = (entry_id, digest)
        return Entry(
            entry_id, self.dataset, kind, job_id, plan_hash, epsilon, delta, now, prev, digest
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or a read snapshot), rolled back on any error."""

    def __init__(self, ledger: BudgetLedger, write: bool) -> None:
        self.ledger = ledger
        self.write = write

    def __enter__(self) -> None:
        try:
            self.ledger._db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        except sqlite3.DatabaseError as exc:
            raise self.ledger._tampered(f"it cannot be opened for a transaction ({exc})") from exc
        try:
            self.ledger._verify_locked()
        except BaseException:
            self.ledger._db.execute("ROLLBACK")
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ledger._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _sum_spend(spend: dict[str, tuple[float, float]]) -> tuple[float, float]:
    return math.fsum(e for e, _ in spend.values()), math.fsum(d for _, d in spend.values())


def _check_amount(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError(f"privacy spend epsilon must be finite and >= 0, found {epsilon}")
    if not (0 <= delta < 1):
        raise ConfigError(f"privacy spend delta must be in [0, 1), found {delta}")
