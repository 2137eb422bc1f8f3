"""Cross-check a study's audit log against its run store: the gaps a hash chain cannot see.

The chain proves that the entries a log holds are unchanged and in order, but not that
none is missing at the end. The run store knows more: the head it recorded after the last
append (:mod:`fedcare.net.recorded_audit`), and the facts that each had an audit entry
written before the store recorded them (a run registered: ``job_submitted``; a round
finished: ``round_completed``; an update counted in a finished round: ``update_accepted``;
a run finished or failed: ``run_finished`` / ``run_failed``). Every fact without its entry
is a problem that names the run, round or site.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedcare.net.store import RunStore
from fedcare.runtime.audit import AuditEntry, AuditLog, AuditProblem

STORE_FILE = "runs.db"


def store_beside(log: Path) -> Path | None:
    """The run store of the study folder the log sits in, if there is one."""
    candidate = Path(log).parent / STORE_FILE
    return candidate if candidate.is_file() else None


def cross_check(log: Path, store: RunStore) -> list[AuditProblem]:
    """Problems found comparing the audit log ``log`` with what ``store`` recorded."""
    entries = AuditLog(log).entries()
    return [*_head_problems(log, entries, store), *_fact_problems(entries, store)]


def _head_problems(log: Path, entries: list[AuditEntry], store: RunStore) -> list[AuditProblem]:
    recorded = store.audit_head(Path(log).name)
    if recorded is None:
        return []
    count, head = recorded
    last = count - 1
    by_index = {e.index: e for e in entries}
    found = by_index.get(last)
    if found is not None:
        if found.hash == head:
            return []
        return [
            AuditProblem(
                "differs",
                last,
                None,
                f"entry {last} is not the one the run store {store.url} recorded (hash "
                f"{head[:16]}, found {found.hash[:16]}): the log was rewritten",
            )
        ]
    highest = max(by_index, default=-1)
    if highest > last:
        return []  # entry `last` is gone from the middle: verify names it as removed
    span = f"entry {last} is" if highest + 1 == last else f"entries {highest + 1}-{last} are"
    return [
        AuditProblem(
            "truncated",
            highest + 1,
            None,
            f"{span} missing from the end of the log: the run store {store.url} recorded "
            f"{count} entries ending in {head[:16]}, the log holds {highest + 1}",
        )
    ]


def _has(entries: Iterable[AuditEntry], kind: str, **match: Any) -> bool:
    return any(
        e.kind == kind and all(e.body.get(k) == v for k, v in match.items()) for e in entries
    )


def _fact_problems(entries: list[AuditEntry], store: RunStore) -> list[AuditProblem]:
    problems: list[AuditProblem] = []

    def missing(what: str) -> None:
        problems.append(
            AuditProblem("missing", None, None, f"{what}, but the audit log has no entry for it")
        )

    by_run: dict[str, list[AuditEntry]] = {}
    for entry in entries:
        by_run.setdefault(str(entry.body.get("run_id")), []).append(entry)
    for run in store.runs():
        mine = by_run.get(run.run_id, [])
        if not _has(mine, "job_submitted"):
            missing(f"run '{run.run_id}' is registered in the run store (job_submitted)")
        for record in store.rounds(run.run_id):
            if record.status != "finished":
                continue  # an unfinished round is re-run on resume, with its entries
            if not _has(mine, "round_completed", round=record.round):
                missing(f"run '{run.run_id}' round {record.round + 1} finished (round_completed)")
            for site in record.by_status("contributed"):
                if not _has(mine, "update_accepted", round=record.round, site=site):
                    missing(
                        f"run '{run.run_id}' round {record.round + 1} counted the update of "
                        f"site '{site}' (update_accepted)"
                    )
        final = {"finished": "run_finished", "failed": "run_failed"}.get(run.status)
        if final is not None and not _has(mine, final):
            missing(f"run '{run.run_id}' is {run.status} in the run store ({final})")
    return problems
