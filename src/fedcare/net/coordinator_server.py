"""The coordinator process: drives a CoordinatorMachine over gRPC, persists what happens.

One lock serialises every call into the sans-IO machine (site streams are read on their
own threads; a timer thread calls ``tick`` for deadlines). The rule: a fact is sent or
acted on only after it is durable. After each call the driver takes the machine's events
in order; for an event that carries a checkpoint (a round aggregated before its
evaluation, a round finished) it first writes the checkpoint (temporary file, fsync,
rename, folder fsync) and its ``checkpoint_saved`` audit entry (SHA-256 digest and the
digest it replaced), then records the event in the run store and the signed audit log;
only after every event is recorded does it send the machine's messages. So no site hears
that a round counted (``contributed``) before the coordinator could come back with that
round, and after a crash anywhere the checkpoint is either the last one the audit log
names or the one right after it: :mod:`fedcare.net.reconcile` completes the records a
crash cut short, and refuses a checkpoint that was changed, deleted or rolled back. Every
write and send is a named fault point (``faults.points_of("coordinator")``) that the
crash tests kill at. A write the
storage refuses (full disk, read-only or immutable file) stops the run there with a
message naming the file (``CoordinatorDriver._stop_on_storage``): nothing that depends on
it is sent, and ``coordinator resume`` continues once the storage is fixed.

A plain update streams chunk by chunk into an intake (hashed and measured as it arrives,
kept in a scratch file: :mod:`fedcare.net.update_spool`) and the round's mean is folded
from the kept updates when it closes, so the coordinator never holds an update whole;
other updates are reassembled one at a time (the channel's in-flight budget holds the
others back). The audit entries of one step share one fsync, made before anything of that
step is sent.

Folder of a deployed run (inside the study folder)::

    runs.db                   runs, rounds, participants, metrics, events (SQLite, WAL)
    audit.log                 hash-chained, Ed25519-signed entries
    deploy/RUN/plan.json      the approved plan, coordinator options and the study it came from
    deploy/RUN/checkpoint.safetensors   after every round
    deploy/RUN/result.json    history and final evaluation (summaries and the additive
                              counts they come from) when the run ends
    deploy/RUN/model.safetensors        the released model

A deployed study is several runs (strategy x seed) served one after another on one
listening port (:func:`serve_runs`): when a run ends, the next run's driver takes over the
port, the sites' streams are closed and the sites reconnect and say Hello to the next run.
Each run's job plan carries the whole study plan, whose hash the owners approved once.

From the finished runs the study folder gets what a simulated study writes (metrics.json,
report.html, models/): see :mod:`fedcare.study.deployed`.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.core import faults
from fedcare.core.errors import ConfigError, FedcareError
from fedcare.core.metrics import eval_counts, eval_from_counts
from fedcare.core.storage import StorageError, storage_failure
from fedcare.core.vectors import FloatVector
from fedcare.net.admission import check_declared, max_message_bytes
from fedcare.net.audit_signers import record_signer
from fedcare.net.channel import CoordinatorServer, Link, StreamRefusedError, TransportLimits
from fedcare.net.reconcile import CHECKPOINT_SAVED, Reconciler, audit_body, checkpoint_body
from fedcare.net.recorded_audit import RecordedAuditLog
from fedcare.net.run_files import (
    finite_metrics,
    load_plan,
    read_plan_file,
    run_dir,
    save_plan,
    write_json_atomic,
)
from fedcare.net.serde import ChunkSink, VectorHead
from fedcare.net.store import RunStore, StoreError
from fedcare.net.tls import TlsBundle, check_peer_certificate, load_revoked
from fedcare.net.update_spool import IN_MEMORY_BYTES, update_store
from fedcare.runtime.audit import AuditEntry, AuditLog
from fedcare.runtime.checkpoint import (
    remove_stale_temporaries,
    save_checkpoint,
    save_released_model,
)
from fedcare.runtime.coordinator import (
    CoordinatorMachine,
    CoordinatorOptions,
    Outgoing,
    Phase,
    RuntimeEvent,
)
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import AuditCopy, UpdateMessage
from fedcare.runtime.rounds import RunPlan, StudyPlan
from fedcare.runtime.streamed_update import UpdateIntake, segments_of

Log = Callable[[str], None]

# Lines that must stand out in the coordinator's terminal start with one of these (the CLI
# colours them): a round that ran short, a site left out; a run that stopped.
WARNING = "WARNING: "
STOPPED = "STOPPED: "

# Fault points, in the order a round reaches them (crash tests walk this list).
STORE_ROUND_STARTED = faults.declare(
    "coordinator.store.round_started", "runs.db has the round as started, nothing sent yet"
)
AUDIT_APPENDED = faults.declare(
    "coordinator.audit.appended",
    "an audit entry is appended (fsynced with the step's other entries, before any send)",
)
STORE_PARTICIPANT = faults.declare(
    "coordinator.store.participant", "runs.db has a site's part in the round (update verdict)"
)
CHECKPOINT_WRITTEN = faults.declare(
    "coordinator.checkpoint.written",
    "the temporary checkpoint file is complete and fsynced, not yet renamed into place",
)
CHECKPOINT_RENAMED = faults.declare(
    "coordinator.checkpoint.renamed",
    "the new checkpoint is in place; its audit entry and the store are not yet written",
)
STORE_ROUND_FINISHED = faults.declare(
    "coordinator.store.round_finished", "runs.db has the round as finished (after its checkpoint)"
)
RESULT_WRITTEN = faults.declare(
    "coordinator.result.written", "model.safetensors and result.json written; status not yet"
)
STORE_STATUS = faults.declare("coordinator.store.status", "runs.db has the run's final status")
# One point per kind of message the coordinator sends, reached just before it leaves.
SEND_POINTS = {
    kind: faults.declare(f"coordinator.send.{kind}", f"a '{kind}' message is about to be sent")
    for kind in (
        "job_plan",
        "train_request",
        "update_verdict",
        "eval_request",
        "run_finished",
        "audit_entry",
        "error_report",
    )
}

# Machine events that become signed audit entries (the rest go to the run store only).
AUDITED = {
    "round_started",
    "site_approved",
    "update_accepted",
    "update_rejected",
    "round_completed",
    "run_finished",
    "run_failed",
    "plan_refused",
}


@dataclass(frozen=True)
class Security:
    """How the coordinator authenticates: its bundle and where revocations are listed."""

    bundle: TlsBundle | None  # None: --insecure (loopback tests only)
    revoked_file: Path | None = None  # the CA's revoked.json, re-read on every connection

    def peer_check(self) -> Callable[[bytes], str] | None:
        if self.bundle is None:
            return None
        ca_pem, revoked_file = self.bundle.ca_pem, self.revoked_file

        def check(pem: bytes) -> str:
            revoked = load_revoked(revoked_file) if revoked_file else set()
            return check_peer_certificate(pem, ca_pem, revoked, role="site")

        return check

    @property
    def author(self) -> str:
        return self.bundle.name if self.bundle else "coordinator"

    def signing_key(self) -> Ed25519PrivateKey:
        if self.bundle is None:  # insecure loopback test: an ephemeral key
            return Ed25519PrivateKey.generate()
        return self.bundle.signing_private_key()


@dataclass
class RunOutcome:
    run_id: str
    status: str
    rounds: int
    final_params: FloatVector
    history: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""


class CoordinatorDriver:
    """Owns the machine, the store, the audit log and the sites' links for one run."""

    def __init__(
        self,
        folder: Path,
        machine: CoordinatorMachine,
        security: Security,
        *,
        store: RunStore | None = None,
        log: Log = print,
        signing_key: Ed25519PrivateKey | None = None,
        last_digest: str = "",
    ) -> None:
        self.folder = Path(folder)
        self.machine = machine
        self.run_id = machine.run_id
        self.security = security
        self.store = store or RunStore.in_folder(self.folder)
        self.audit: AuditLog = RecordedAuditLog(self.folder / "audit.log", self.store)
        self.signing_key = signing_key or security.signing_key()
        self.last_digest = last_digest  # of the checkpoint in place ("" before the first)
        if security.bundle is not None:  # so `fedcare audit verify` needs only the log
            record_signer(self.folder, security.bundle)
        self.log = log
        self.links: dict[str, Link] = {}
        self.lock = threading.RLock()
        self.finished = threading.Event()
        self.storage_failure: StorageError | None = None  # set: stopped, see _stop_on_storage
        secure = machine.strategy.secure
        self.max_message_bytes = max_message_bytes(
            machine.size,
            machine.extras,
            machine.plan.num_classes,
            encrypted=secure is not None and secure.kind == "encrypt",
        )

    # -- LinkHandler (called from the channel's reader threads) ----------------------------

    def connected(self, link: Link) -> None:
        sites = self.machine.plan.sites
        if link.identity not in sites:  # before any of its bytes is buffered
            reason = (
                f"site '{link.identity}' is not in the plan of run '{self.run_id}' (its sites: "
                f"{', '.join(sites)}); this coordinator does not accept its stream"
            )
            self.log(f"{WARNING}refused a stream from {link.peer}: {reason}")
            self.store.record_event(
                self.run_id, "stream_refused", link.identity, {"reason": reason}
            )
            raise StreamRefusedError(reason, "PERMISSION_DENIED")
        with self.lock:
            old = self.links.get(link.identity)
            if old is not None:  # a restarted site: the new stream replaces the old one
                old.close()
                replaced = "replaced by a new connection from the same site (agent restarted)"
                self._apply(
                    self.machine.site_disconnected(link.identity, time.monotonic(), replaced)
                )
            self.links[link.identity] = link
            self.log(f"site '{link.identity}' connected")
            self._apply(self.machine.site_connected(link.identity, time.monotonic()))

    def received(self, link: Link, env: Any) -> None:
        with self.lock:
            if self.links.get(link.identity) is not link:
                return  # a stale stream of a site that has reconnected
            self._apply(self.machine.handle(env, time.monotonic()))

    def admit(self, link: Link, head: VectorHead) -> None:
        """A vector larger than the plan allows is refused before it is reserved."""
        check_declared(head, link.identity, self.run_id, self.max_message_bytes)

    def begin(self, link: Link, head: VectorHead) -> ChunkSink | None:
        """A plain update streams chunk by chunk into an intake (hashed and measured on
        the way, kept in a scratch file), so the coordinator never holds it whole; every
        other message is reassembled and goes to :meth:`received`."""
        env = head.envelope
        if env.kind != UpdateMessage.KIND or "wire" in env.header or head.dtype != np.float32:
            return None
        segments = segments_of(env.header, head.length)
        if segments is None or not self.machine.folds_updates:
            return None  # parsed whole: a malformed layout is refused with its reason
        store = update_store(run_dir(self.folder, self.run_id) / "spool", head.nbytes)
        return _StreamedUpdate(self, link, env, UpdateIntake(segments, store))

    def streamed(self, link: Link, env: Envelope, intake: UpdateIntake) -> None:
        """The last chunk of a streamed update is in: the machine takes it from here."""
        with self.lock:
            if self.links.get(link.identity) is not link:
                intake.discard()
                return  # a stale stream of a site that has reconnected
            round_ = self.machine.current
            if 4 * intake.size > IN_MEMORY_BYTES and round_ and round_.pending == [link.identity]:
                return_freed_memory()  # the round's last update: fold without freed buffers
            self._apply(self.machine.handle_streamed(env, intake, time.monotonic()))

    def duplicate_refused(self, first: Link, peer: str, reason: str) -> None:
        self.log(
            f"{WARNING}refused a second connection for site '{first.identity}' from {peer}: {reason}"
        )
        detail = {"peer": peer, "connected_from": first.peer}
        self.store.record_event(self.run_id, "duplicate_refused", first.identity, detail)

    def disconnected(self, link: Link, reason: str) -> None:
        with self.lock:
            if self.links.get(link.identity) is not link:
                return
            del self.links[link.identity]
            known = self.machine.sites.get(link.identity)
            if self.machine.done:
                self.log(f"site '{link.identity}' left: the run is over ({reason})")
            elif known is not None and known.excluded:
                # The agent stops by design once its data problems are acknowledged.
                self.log(
                    f"site '{link.identity}' disconnected after reporting data problems "
                    f"({reason}); it stays out of the run until its agent reconnects with a "
                    "fixed file"
                )
            else:
                self.log(f"site '{link.identity}' disconnected: {reason}")
            if self.storage_failure is not None:
                return
            try:
                self.store.record_event(
                    self.run_id, "stream_closed", link.identity, {"reason": reason}
                )
            except (OSError, StoreError) as exc:
                self._stop_on_storage(exc)
                return
            self._apply(self.machine.site_disconnected(link.identity, time.monotonic(), reason))

    def tick(self) -> None:
        with self.lock:
            self._apply(self.machine.tick(time.monotonic()))

    # -- persistence, then sending --------------------------------------------------------

    def _apply(self, outgoing: list[Outgoing]) -> None:
        if self.storage_failure is not None:
            return  # stopped: the machine is ahead of what is durable; nothing more goes out
        shares: list[tuple[Link, Envelope]] = []
        try:
            # One audit fsync for the step's entries, and nothing sent before it.
            with self.audit.batch():
                for event in self.machine.drain_events():
                    shares += self._persist(event)
        except (OSError, StoreError) as exc:
            self._stop_on_storage(exc)
            return
        for holder, copy in shares:
            self._send(holder, copy)
        for recipient, env in outgoing:
            link = self.links.get(recipient)
            if link is not None:
                self._send(link, env)
        if self.machine.done and not self.finished.is_set():
            try:
                self._finish()
            except (OSError, StoreError) as exc:
                self._stop_on_storage(exc)

    def _stop_on_storage(self, exc: OSError | StoreError) -> None:
        """A write the run depends on failed (full disk, read-only or immutable file): stop
        the run here. The messages that depended on it are not sent, nothing more is
        written, and what was written before stays as it was, so ``coordinator resume``
        continues from the last durable state once the storage is fixed."""
        failure = storage_failure(exc, self.store.path)
        if failure is None:
            raise exc  # not the storage: a bug, keep its traceback
        self.storage_failure = failure
        self.log(
            f"{STOPPED}run {self.run_id} at round {self.machine.round + 1}: {failure}. "
            "Nothing that depends on this write was sent to the sites, and everything written "
            f"before it is intact; then run: fedcare coordinator resume --out {self.folder} "
            "(with this command's --bundle, --ca and --address)"
        )
        self.finished.set()

    def _send(self, link: Link, env: Any) -> None:
        point = SEND_POINTS.get(env.kind)
        if point is not None:
            faults.reach(point)
        link.send(env)

    def _save_checkpoint(self, ev: RuntimeEvent) -> None:
        """Make the event's checkpoint durable, then record its digest in the audit log."""
        if ev.snapshot is None:
            return
        state, extra = ev.snapshot
        saved = save_checkpoint(
            run_dir(self.folder, self.run_id),
            state,
            {},
            extra,
            previous=self.last_digest,
            on_written=lambda: faults.reach(CHECKPOINT_WRITTEN),
            on_renamed=lambda: faults.reach(CHECKPOINT_RENAMED),
        )
        body = checkpoint_body(
            self.run_id, state.round, str(extra["stage"]), saved.digest, self.last_digest
        )
        self.last_digest = saved.digest
        self.audit.append(CHECKPOINT_SAVED, self.security.author, body, self.signing_key)
        faults.reach(AUDIT_APPENDED)

    def _persist(self, ev: RuntimeEvent) -> list[tuple[Link, Envelope]]:
        """Record one event; returns the audit copies to send once the step is durable."""
        store, run = self.store, self.run_id
        site = ev.site or None
        detail = ev.detail
        self._save_checkpoint(ev)  # first: the records below and every send rely on it
        store.record_event(run, ev.kind, site, detail)
        if ev.kind == "round_started":
            store.start_round(run, ev.round, detail.get("sampled", []))
            for s, reason in dict(detail.get("dropped", {})).items():
                store.record_participant(run, ev.round, s, "dropped", str(reason))
            for s in detail.get("requested", []):
                store.record_participant(run, ev.round, s, "requested")
            faults.reach(STORE_ROUND_STARTED)
            self.log(f"round {ev.round + 1}: training at {', '.join(detail.get('requested', []))}")
            left_out = dict(detail.get("dropped", {}))
            if left_out:
                self.log(f"{WARNING}round {ev.round + 1} starts without {_reasons(left_out)}")
        elif ev.kind == "update_accepted":
            store.record_participant(
                run, ev.round, ev.site, "contributed", "", detail.get("update_hash"),
                int(detail.get("nbytes", 0)),
            )  # fmt: skip
            faults.reach(STORE_PARTICIPANT)
        elif ev.kind == "update_rejected":
            store.record_participant(
                run, ev.round, ev.site, "rejected", str(detail.get("reason", "")),
                detail.get("update_hash"),
            )  # fmt: skip
            faults.reach(STORE_PARTICIPANT)
            self.log(f"update from '{ev.site}' rejected: {detail.get('reason')}")
        elif ev.kind == "site_dropped":  # ev.round: the round in progress when it happened
            store.record_participant(run, ev.round, ev.site, "dropped", str(detail.get("reason")))
            self.log(f"site '{ev.site}' dropped from the round: {detail.get('reason')}")
        elif ev.kind == "round_finished":
            record = detail.get("record", {})
            round_index = int(record.get("round", ev.round)) - 1
            store.finish_round(run, round_index, record)  # after its checkpoint (above)
            faults.reach(STORE_ROUND_FINISHED)
            self.log(
                f"round {round_index + 1} done: {len(record.get('participants', []))} site(s), "
                f"pooled {json.dumps(record.get('pooled_metrics', {}))}"
            )
        elif ev.kind in {"waiting_approval", "site_approved", "data_problem"}:
            status = {"waiting_approval": "waiting for approval", "site_approved": "approved"}
            if ev.kind == "waiting_approval":
                hash_ = self.machine.study_hash or detail.get("plan_hash", "")
                text = f"its owner approves with: fedcare site approve {hash_}"
            else:
                text = str(detail.get("reason") or "; ".join(detail.get("problems") or []))
            store.set_site_status(run, ev.site, status.get(ev.kind, "data problem"), text)
            if ev.kind == "site_approved":
                self.log(f"site '{ev.site}' approved the plan")
            elif ev.kind == "waiting_approval":
                self.log(
                    f"site '{ev.site}' is waiting for its data owner to run: "
                    f"fedcare site approve {self.machine.study_hash or detail.get('plan_hash')}"
                )
            elif ev.kind == "data_problem" and detail.get("carried"):
                self.log(
                    f"site '{ev.site}' stays out of this run until its agent reconnects with "
                    f"a fixed file: {detail.get('reason')}"
                )
            elif ev.kind == "data_problem":
                problems = detail.get("problems") or []
                self.log(
                    f"site '{ev.site}' reports {len(problems)} data problem(s); it is out of "
                    "the run until its agent reconnects with a fixed file:"
                    + "".join(f"\n  - {p}" for p in problems)
                )
        elif ev.kind == "plan_refused":
            store.set_site_status(run, ev.site, "refused", str(detail.get("reason", "")))
            self.log(f"site '{ev.site}' refused the plan: {detail.get('reason')}")
        elif ev.kind == "round_completed" and "epsilon" in detail:
            self.log(
                f"round {ev.round}: privacy spent so far epsilon {detail['epsilon']:.4g} "
                f"at delta {detail['delta']:g}"
            )
        elif ev.kind == "site_connected":
            store.set_site_status(run, ev.site, "connected")
        elif ev.kind == "site_disconnected":
            reason = str(detail.get("reason") or "the connection closed")
            if detail.get("out"):  # still out of the run: keep saying why
                store.set_site_status(
                    run, ev.site, "data problem", f"{detail['out']} (disconnected: {reason})"
                )
            else:
                store.set_site_status(run, ev.site, "disconnected", reason)
        elif ev.kind == "site_readmitted":
            self.log(f"site '{ev.site}' is back in the run: its data passes the check now")
        elif ev.kind == "round_short":
            self.log(f"{WARNING}{short_round_line(detail)}")
        elif ev.kind == "run_failed":
            self.log(f"{STOPPED}run {run}: {detail.get('reason')}")
        elif ev.kind == "message_rejected":
            self.log(f"message from '{ev.site}' rejected: {detail}")
        if ev.kind in AUDITED:
            body = audit_body(run, ev.round, ev.site, detail, ev.kind)
            entry = self.audit.append(ev.kind, self.security.author, body, self.signing_key)
            faults.reach(AUDIT_APPENDED)
            return self._audit_copies(entry)
        return []

    def _audit_copies(self, entry: AuditEntry) -> list[tuple[Link, Envelope]]:
        """A signed entry for each connected site it concerns, for the site's own copy.

        Under --insecure there is no certificate to verify it with, so nothing is sent.
        """
        bundle = self.security.bundle
        if bundle is None:
            return []
        certificate = bundle.cert_pem.decode("ascii")
        copy = AuditCopy(self.run_id, self.machine.round, entry.to_dict(), certificate)
        return [
            (link, copy.to_envelope()) for site, link in self.links.items() if entry.concerns(site)
        ]

    def _finish(self) -> None:
        machine = self.machine
        status = "finished" if machine.phase is Phase.FINISHED else "failed"
        folder = run_dir(self.folder, self.run_id)
        save_released_model(folder / "model.safetensors", machine.final_params)
        write_json_atomic(
            folder / "result.json",
            {
                "run_id": self.run_id,
                "status": status,
                "rounds": machine.round,
                "failure": machine.failure,
                "plan_hash": machine.plan_hash,
                "history": machine.checkpoint()[1]["history"],
                "final_eval": {
                    s: finite_metrics(e.summary()) for s, e in machine.final_eval.items()
                },
                "final_counts": {s: eval_counts(e) for s, e in machine.final_eval.items()},
                "reference_counts": {
                    kind: {s: eval_counts(e) for s, e in evals.items()}
                    for kind, evals in machine.reference_evals.items()
                },
                "epsilon": machine.epsilon(),
            },
        )
        faults.reach(RESULT_WRITTEN)
        self.store.set_status(self.run_id, status)
        faults.reach(STORE_STATUS)
        self.log(f"run {self.run_id} {status} after {machine.round} round(s)")
        self.finished.set()

    def outcome(self) -> RunOutcome:
        m = self.machine
        status = {Phase.FINISHED: "finished", Phase.FAILED: "failed"}.get(m.phase, "stopped")
        history = m.checkpoint()[1]["history"]
        if self.storage_failure is not None:  # what is in memory never became durable
            failure = str(self.storage_failure)
            return RunOutcome(self.run_id, "stopped", m.round, m.final_params, history, failure)
        return RunOutcome(self.run_id, status, m.round, m.final_params, history, m.failure)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None
    return trim


def return_freed_memory() -> None:
    """Give the memory the allocator holds free back to the operating system.

    A large update arrives as many transport buffers, allocated and freed on the streams'
    threads. glibc keeps what they freed in its per-thread arenas (about 0.6x the model
    with 10 sites streaming 100 MB each), where it would count against the coordinator a
    second time while the round's mean is folded. ``malloc_trim`` returns those free pages
    (it frees nothing in use); without glibc this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class _StreamedUpdate:
    """The transport's sink for one streamed update: chunks go to the intake on the
    stream's reader thread (no lock: the intake is this message's alone); the complete
    update goes to the driver."""

    driver: CoordinatorDriver
    link: Link
    envelope: Envelope
    intake: UpdateIntake

    def write(self, index: int, values: npt.NDArray[Any]) -> None:
        self.intake.write(index, values)

    def close(self) -> None:
        self.intake.close()
        self.driver.streamed(self.link, self.envelope, self.intake)

    def abort(self, reason: str) -> None:
        self.intake.abort(reason)


def _reasons(missing: Mapping[str, Any]) -> str:
    return "; ".join(f"'{site}' ({why})" for site, why in missing.items())


def short_round_line(short: Mapping[str, Any]) -> str:
    """One line for a round that ran short: ``{round, sampled, contributed, missing}``."""
    sampled, contributed = list(short.get("sampled", [])), list(short.get("contributed", []))
    return (
        f"round {short.get('round')} ran short: {len(contributed)} of {len(sampled)} sampled "
        f"site(s) contributed; missing {_reasons(dict(short.get('missing', {})))}"
    )


def _join_study(machine: CoordinatorMachine, study_plan: StudyPlan | None) -> None:
    """A run of a study: its job plan goes out with the whole study plan (checked here)."""
    if study_plan is None:
        return
    study_plan.position(machine.plan_hash)  # ConfigError if the run is not in the study
    machine.study_plan, machine.study_hash = study_plan.to_dict(), study_plan.hash


def new_run(
    folder: Path,
    run_id: str,
    plan: RunPlan,
    initial_params: FloatVector,
    security: Security,
    options: CoordinatorOptions | None = None,
    log: Log = print,
    study: Mapping[str, Any] | None = None,
    study_plan: StudyPlan | None = None,
) -> CoordinatorDriver:
    """Register a new run (store, plan file, audit 'job_submitted') and its driver.

    ``study``: the config, strategy label and dataset facts the plan came from (kept in
    plan.json for the study folder's metrics.json and report). ``study_plan``: the deployed
    study this run is one of (the sites approve its hash).
    """
    options = options or CoordinatorOptions()
    machine = CoordinatorMachine(run_id, plan, initial_params, options=options)
    _join_study(machine, study_plan)
    store = RunStore.in_folder(folder)
    config: dict[str, Any] = {"plan": plan.to_dict(), "options": asdict(options)}
    if study_plan is not None:
        config["study_hash"] = study_plan.hash
    store.create_run(run_id, plan.study, plan.hash, config)
    save_plan(folder, run_id, plan, options, study)
    driver = CoordinatorDriver(folder, machine, security, store=store, log=log)
    submitted = {"run_id": run_id, "plan_hash": plan.hash, "sites": list(plan.sites)}
    if study_plan is not None:
        submitted["study_hash"] = study_plan.hash
    driver.audit.append("job_submitted", security.author, submitted, driver.signing_key)
    store.set_status(run_id, "waiting")
    return driver


def resume_run(
    folder: Path,
    run_id: str,
    security: Security,
    log: Log = print,
    study_plan: StudyPlan | None = None,
) -> CoordinatorDriver:
    """Continue a run from its last checkpoint (or from the start if no round finished).

    The checkpoint must agree with the audit log and the run store (see
    :mod:`fedcare.net.reconcile`): records a crash cut short are completed first; a
    changed, deleted or rolled-back checkpoint is refused (CheckpointError)."""
    plan, options = load_plan(folder, run_id)
    store = RunStore.in_folder(folder)
    record = store.run(run_id)
    if record.status in {"finished", "failed"}:
        raise ConfigError(f"run '{run_id}' is already {record.status}; nothing to resume")
    directory = run_dir(folder, run_id)
    for stale in remove_stale_temporaries(directory):
        log(f"removed '{stale.name}', a checkpoint write a crash interrupted")
    key = security.signing_key()
    audit = AuditLog(Path(folder) / "audit.log")
    ckpt = Reconciler(directory, run_id, store, audit, security.author, key, log).run()
    if ckpt is not None:
        machine = CoordinatorMachine.restore(plan, ckpt.state, ckpt.extra, options=options)
        if machine.completed is not None:
            log(
                f"resuming run {run_id}: round {machine.round} was aggregated; its "
                "evaluation is sent again once the sites are back"
            )
        else:
            log(f"resuming run {run_id} after round {machine.round}")
        ended = {e.body.get("run_id") for e in audit.entries() if e.kind == "run_finished"}
        if run_id not in ended:
            machine.resumed_finished()  # records the end if the crash came before it
    else:
        init = np.load(directory / "initial.npy", allow_pickle=False)
        machine = CoordinatorMachine(run_id, plan, init, options=options)
        log(f"resuming run {run_id} from its start (no round had finished)")
    _join_study(machine, study_plan)
    store.record_event(run_id, "run_resumed", None, {"round": machine.round})
    store.set_status(run_id, "waiting")
    digest = ckpt.digest if ckpt is not None else ""
    driver = CoordinatorDriver(
        folder, machine, security, store=store, log=log, signing_key=key, last_digest=digest
    )
    _resubmit_if_lost(driver, plan, study_plan)
    return driver


def _resubmit_if_lost(
    driver: CoordinatorDriver, plan: RunPlan, study_plan: StudyPlan | None
) -> None:
    """A run registered in the store whose 'job_submitted' entry never reached the audit
    log (the disk was full at that append): write it now, so the log is complete."""
    run_id = driver.run_id
    entries = driver.audit.entries() if driver.audit.path.exists() else []
    if any(e.kind == "job_submitted" and e.body.get("run_id") == run_id for e in entries):
        return
    submitted = {"run_id": run_id, "plan_hash": plan.hash, "sites": list(plan.sites)}
    if study_plan is not None:
        submitted["study_hash"] = study_plan.hash
    driver.audit.append("job_submitted", driver.security.author, submitted, driver.signing_key)
    driver.log(f"run {run_id}: its job_submitted audit entry was missing; written now")


def save_initial(folder: Path, run_id: str, params: FloatVector) -> None:
    """Keep the initial model so a run killed before its first checkpoint can resume."""
    path = run_dir(folder, run_id) / "initial.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(params, np.float32), allow_pickle=False)


class _CurrentRun:
    """The server's handler: forwards each stream event to the driver of the run being
    served. Streams of a finished run are closed after the switch; the driver a late event
    reaches ignores a link it does not hold."""

    def __init__(self, driver: CoordinatorDriver) -> None:
        self.driver = driver

    def connected(self, link: Link) -> None:
        self.driver.connected(link)

    def received(self, link: Link, env: Any) -> None:
        self.driver.received(link, env)

    def disconnected(self, link: Link, reason: str) -> None:
        self.driver.disconnected(link, reason)

    def admit(self, link: Link, head: VectorHead) -> None:
        self.driver.admit(link, head)

    def begin(self, link: Link, head: VectorHead) -> ChunkSink | None:
        return self.driver.begin(link, head)

    def duplicate_refused(self, first: Link, peer: str, reason: str) -> None:
        self.driver.duplicate_refused(first, peer, reason)


NextRun = Callable[[RunOutcome], CoordinatorDriver | None]


def serve(
    driver: CoordinatorDriver,
    address: str,
    *,
    limits: TransportLimits | None = None,
    insecure: bool = False,
    tick_s: float = 0.2,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> RunOutcome:
    """Listen for sites until the run ends (or ``stop`` is set); return its outcome."""
    outcomes = serve_runs(
        driver,
        address,
        lambda _: None,
        limits=limits,
        insecure=insecure,
        tick_s=tick_s,
        ready=ready,
        stop=stop,
    )
    return outcomes[0]


def serve_runs(
    first: CoordinatorDriver,
    address: str,
    next_run: NextRun,
    *,
    limits: TransportLimits | None = None,
    insecure: bool = False,
    tick_s: float = 0.2,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[RunOutcome]:
    """Serve runs one after another on one port: ``first``, then whatever ``next_run``
    returns for each finished run's outcome (None: no more). Stops after a run that does
    not finish (failed, or ``stop`` set). Returns each served run's outcome, in order."""
    bundle = first.security.bundle
    if not insecure and bundle is None:
        raise ConfigError("the coordinator needs its bundle (--bundle), or --insecure on loopback")
    size = int(first.machine.size) * 4
    limits = limits or TransportLimits(inflight_bytes=max(size, 64 << 20))
    handler = _CurrentRun(first)
    server = CoordinatorServer(
        address,
        handler,
        tls=bundle,
        peer_check=first.security.peer_check(),
        limits=limits,
        insecure=insecure,
        max_sites=max(8, 2 * len(first.machine.plan.sites)),
    )
    port = server.start()
    first.log(f"coordinator for run {first.run_id} listening on port {port}")
    if ready is not None:
        ready(port)
    stop = stop or threading.Event()
    outcomes: list[RunOutcome] = []
    driver: CoordinatorDriver | None = first
    try:
        while driver is not None:
            outcome, following = _serve_one(driver, handler, next_run, tick_s, stop)
            outcomes.append(outcome)
            driver = following
    finally:
        server.stop(1.0)
        handler.driver.store.close()
    return outcomes


def _serve_one(
    driver: CoordinatorDriver,
    handler: _CurrentRun,
    next_run: NextRun,
    tick_s: float,
    stop: threading.Event,
) -> tuple[RunOutcome, CoordinatorDriver | None]:
    """Tick one run to its end; hand the port to the next run's driver before the sites'
    streams are closed, so they reconnect straight into it."""
    while not driver.finished.wait(tick_s) and not stop.is_set():
        driver.tick()
    # Let the last messages (RunFinished) reach the sites before closing the streams.
    time.sleep(0.5 if driver.finished.is_set() else 0.0)
    outcome = driver.outcome()
    following = next_run(outcome) if outcome.status == "finished" and not stop.is_set() else None
    with driver.lock:
        if following is not None:
            with following.lock:
                following.machine.carry_data_failures(driver.machine.sites)
                following._apply([])
            handler.driver = following
            following.log(
                f"run {following.run_id} (next of the study) takes over; the sites reconnect to it"
            )
        for link in list(driver.links.values()):
            link.close()
    if following is not None:
        driver.store.close()
    return outcome, following


def describe_waiting(machine: CoordinatorMachine) -> Mapping[str, str]:
    """Why each site that is not ready is not (for the console and status)."""
    return {n: s.why_not_ready() for n, s in machine.sites.items() if not s.ready}


__all__ = [
    "CoordinatorDriver",
    "FedcareError",
    "RunOutcome",
    "Security",
    "describe_waiting",
    "eval_counts",
    "eval_from_counts",
    "load_plan",
    "new_run",
    "read_plan_file",
    "resume_run",
    "run_dir",
    "save_initial",
    "serve",
    "serve_runs",
]
