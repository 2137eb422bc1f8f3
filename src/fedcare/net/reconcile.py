"""Resume a deployed run only from a state that the run store, checkpoint and audit log
agree on, completing whatever a crash cut short.

The coordinator's write order (:mod:`fedcare.net.coordinator_server`) makes the checkpoint
the first durable record of a round's outcome: checkpoint file, then its ``checkpoint_saved``
audit entry (digest, the digest it replaced, round, stage), then the round's other audit
entries and the store, and only then any message. So after a crash the checkpoint is
either the one the audit log names last, or the next one (its ``previous`` is that digest):
the entries and store rows it lacks are written now, idempotently. Anything else is a
checkpoint that was changed, replaced, rolled back or deleted, and resuming from it would
silently diverge from what the records and the sites already hold: it is refused with the
file and what differs (expected round/digest vs found).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.net.store import RunStore
from fedcare.runtime.audit import AuditEntry, AuditLog
from fedcare.runtime.checkpoint import CHECKPOINT_NAME, Checkpoint, CheckpointError, load_checkpoint

CHECKPOINT_SAVED = "checkpoint_saved"  # audit entry kind: a checkpoint became durable
ROUND_COMPLETED = "round_completed"

Log = Callable[[str], None]


def checkpoint_body(
    run_id: str, ckpt_round: int, stage: str, digest: str, previous: str
) -> dict[str, Any]:
    """The audit body that records one checkpoint (``round``: rounds it has completed)."""
    return {
        "run_id": run_id,
        "round": ckpt_round,
        "stage": stage,
        "digest": digest,
        "previous": previous,
        "file": f"deploy/{run_id}/{CHECKPOINT_NAME}",
    }


def audit_body(
    run_id: str, round_: int, site: str, detail: Mapping[str, Any], kind: str
) -> dict[str, Any]:
    """The audit body of a machine event (one definition for the driver and for repairs)."""
    body = {"run_id": run_id, "round": round_, **detail}
    if site:
        body["site"] = site
    sites = detail.get("requested", detail.get("participants"))
    if isinstance(sites, list):
        body["sites"] = sites  # every site a round entry concerns keeps a copy
    if kind in {"run_finished", "run_failed"}:
        body["broadcast"] = True
    return body


def _describe(round_: Any, stage: Any, digest: Any) -> str:
    return f"round {round_} ({stage}), digest {str(digest)[:16]}…"


def _stage(ckpt: Checkpoint) -> str:
    return str(ckpt.extra.get("stage", "finished"))


class Reconciler:
    """Checks one run's checkpoint against its audit entries and store rows, then
    writes what a crash left out."""

    def __init__(
        self,
        directory: Path,
        run_id: str,
        store: RunStore,
        audit: AuditLog,
        author: str,
        signing_key: Ed25519PrivateKey,
        log: Log = print,
    ) -> None:
        self.directory, self.run_id = Path(directory), run_id
        self.store, self.audit, self.author, self.key, self.log = (
            store,
            audit,
            author,
            signing_key,
            log,
        )
        self.entries = [e for e in audit.entries() if e.body.get("run_id") == run_id]

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_NAME

    def saved(self) -> list[AuditEntry]:
        return [e for e in self.entries if e.kind == CHECKPOINT_SAVED]

    def has_entry(self, kind: str) -> bool:
        return any(e.kind == kind for e in self.entries)

    def run(self) -> Checkpoint | None:
        """The checkpoint to resume from (None: from the start), records completed."""
        saved = self.saved()
        last = saved[-1].body if saved else None
        if not self.path.exists():
            self._no_checkpoint(last)
            return None
        ckpt = load_checkpoint(self.directory)  # refuses a changed or truncated file
        if not ckpt.digest:
            if last is not None:
                raise CheckpointError(
                    f"checkpoint '{self.path}' carries no digest, but the audit log records "
                    f"{_describe(last['round'], last['stage'], last['digest'])} for run "
                    f"'{self.run_id}': it was replaced by an older or foreign file"
                )
            return ckpt  # written before checkpoints had digests
        expected = "" if last is None else str(last["digest"])
        if ckpt.digest != expected:
            if ckpt.previous != expected:
                self._refuse(ckpt, last, {str(e.body["digest"]) for e in saved})
            # Written, then the crash came before its audit entry: record it now.
            self._append(
                CHECKPOINT_SAVED,
                checkpoint_body(
                    self.run_id, ckpt.state.round, _stage(ckpt), ckpt.digest, ckpt.previous
                ),
            )
        self._complete_round_entry(ckpt)
        self._complete_store(ckpt)
        return ckpt

    def _no_checkpoint(self, last: Mapping[str, Any] | None) -> None:
        if last is not None:
            raise CheckpointError(
                f"checkpoint '{self.path}' is missing: the audit log records "
                f"{_describe(last['round'], last['stage'], last['digest'])} for run "
                f"'{self.run_id}'; restore that file to resume"
            )
        finished = [r.round + 1 for r in self.store.rounds(self.run_id) if r.status == "finished"]
        if finished:
            raise CheckpointError(
                f"checkpoint '{self.path}' is missing: runs.db records round(s) {finished} of "
                f"run '{self.run_id}' as finished; restore that file to resume"
            )

    def _refuse(self, ckpt: Checkpoint, last: Mapping[str, Any] | None, known: set[str]) -> None:
        found = _describe(ckpt.state.round, _stage(ckpt), ckpt.digest)
        if last is None:
            raise CheckpointError(
                f"checkpoint '{self.path}' holds {found}, but the audit log records no "
                f"checkpoint of run '{self.run_id}' before it (previous digest "
                f"{ckpt.previous[:16]}…): it does not belong to this run's records"
            )
        expected = _describe(last["round"], last["stage"], last["digest"])
        why = (
            "it is an older checkpoint of this run (rolled back)"
            if ckpt.digest in known
            else "the file was replaced or re-written"
        )
        raise CheckpointError(
            f"checkpoint '{self.path}' holds {found}, but the audit log's latest checkpoint "
            f"of run '{self.run_id}' is {expected}: {why}"
        )

    def _complete_round_entry(self, ckpt: Checkpoint) -> None:
        """An aggregated checkpoint whose round_completed entry the crash cut off."""
        completed = ckpt.extra.get("completed")
        if _stage(ckpt) != "aggregated" or not isinstance(completed, dict):
            return
        event = dict(completed.get("event") or {})
        if any(
            e.kind == ROUND_COMPLETED and e.body.get("round") == event.get("round")
            for e in self.entries
        ):
            return
        self._append(
            ROUND_COMPLETED, audit_body(self.run_id, ckpt.state.round, "", event, ROUND_COMPLETED)
        )

    def _complete_store(self, ckpt: Checkpoint) -> None:
        """Finish in runs.db each round the checkpoint's history holds; refuse a store
        that is ahead of the checkpoint."""
        history = [dict(r) for r in ckpt.extra.get("history", [])]
        in_history = {int(r["round"]) - 1 for r in history}
        rows = {r.round: r for r in self.store.rounds(self.run_id)}
        ahead = sorted(
            i + 1 for i, r in rows.items() if r.status == "finished" and i not in in_history
        )
        if ahead:
            raise CheckpointError(
                f"checkpoint '{self.path}' holds {len(history)} finished round(s), but runs.db "
                f"records round(s) {ahead} of run '{self.run_id}' as finished too: the "
                "checkpoint is older than the run store (rolled back)"
            )
        for record in history:
            index = int(record["round"]) - 1
            row = rows.get(index)
            if row is not None and row.status == "finished":
                continue
            if row is None:
                self.store.start_round(self.run_id, index, list(record.get("sampled", [])))
            self.store.finish_round(self.run_id, index, record)
            self.log(f"run store: round {index + 1} of run {self.run_id} recorded as finished")

    def _append(self, kind: str, body: dict[str, Any]) -> None:
        entry = self.audit.append(kind, self.author, body, self.key)
        self.entries.append(entry)
        self.log(f"audit log: '{kind}' entry of round {body.get('round')} written after the crash")


def disagreements(folder: Path, run_id: str) -> list[str]:
    """Where a run's store, checkpoint and audit log disagree ([] when they agree): every
    finished round is finished in runs.db, has its ``round_completed`` entry and a
    ``checkpoint_saved`` entry, and the audit log's latest checkpoint is the file in place."""
    directory = Path(folder) / "deploy" / run_id
    try:
        ckpt = load_checkpoint(directory)
    except CheckpointError as exc:
        return [str(exc)]
    entries = [
        e for e in AuditLog(Path(folder) / "audit.log").entries() if e.body.get("run_id") == run_id
    ]
    saved = [e.body for e in entries if e.kind == CHECKPOINT_SAVED]
    problems = []
    if not saved or saved[-1].get("digest") != ckpt.digest:
        found = saved[-1].get("digest") if saved else "none"
        problems.append(
            f"the audit log's latest checkpoint digest is {found}, the file's {ckpt.digest}"
        )
    completed = {e.body.get("round") for e in entries if e.kind == ROUND_COMPLETED}
    checkpointed = {(b.get("round"), b.get("stage")) for b in saved}
    with RunStore.in_folder(Path(folder)) as store:
        rows = {r.round: r.status for r in store.rounds(run_id)}
        status = store.run(run_id).status
    history = [int(r["round"]) for r in ckpt.extra.get("history", [])]
    for n in history:
        if rows.get(n - 1) != "finished":
            problems.append(f"round {n} is in the checkpoint but runs.db has it {rows.get(n - 1)}")
        if n - 1 not in completed:
            problems.append(f"round {n} has no round_completed audit entry")
        if (n, "finished") not in checkpointed:
            problems.append(f"round {n} has no checkpoint_saved audit entry")
    extra = sorted(n + 1 for n, s in rows.items() if s == "finished" and n + 1 not in history)
    if extra:
        problems.append(f"runs.db has round(s) {extra} finished but the checkpoint does not")
    if status == "finished" and not any(e.kind == "run_finished" for e in entries):
        problems.append("runs.db says finished but the audit log has no run_finished entry")
    return problems
