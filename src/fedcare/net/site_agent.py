"""The site agent: runs next to a hospital's data and drives its SiteMachine over gRPC.

It connects *out* to the coordinator (no inbound port at the hospital), says Hello with
the result of checking its data against the study schema (problems are printed here and
reported to the coordinator; nothing trains on data that failed), and then answers the
coordinator's messages with the machine's replies. A lost connection is retried with
exponential back-off for at most ``give_up_after_s`` without the coordinator (30 min by
default; the agent then stops with :class:`GaveUpError`); a refused certificate, a site not in
the plan and a TLS failure that cannot fix itself (:mod:`fedcare.net.tls_probe`) are not
retried. ``run_status`` says how the last run ended ("" if the agent never heard), so the
CLI exits non-zero when it did not finish. The machine's per-site state
(SCAFFOLD control variate, personal model) is written atomically after every message that
changes it, so a site that crashes and restarts rejoins with it; the file carries a SHA-256
digest of its content, and a changed or truncated state file is refused at start naming
the file (training on from an edited state would silently change the model). Each state
write and each message kind sent is a named fault point (``faults.points_of("site")``)
that crash tests kill at. A site with a privacy
budget keeps it in a ledger file in the same folder (:func:`open_budget`), per dataset.
The coordinator's signed audit entries that concern this site arrive as ``audit_entry``
messages; each is checked (certificate from the study CA, signature, hash, concerns this
site) and appended to ``audit-copy.log`` there, the site's own evidence of what happened.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcare.core import faults
from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.core.storage import StorageError, storage_failure
from fedcare.net.channel import (
    NOTICE_KIND,
    Backoff,
    SiteSession,
    TransportError,
    TransportLimits,
    notice_text,
    open_session,
)
from fedcare.net.tls import (
    TlsBundle,
    check_peer_certificate,
    signing_key_of,
    still_valid,
    valid_until,
)
from fedcare.privacy.budget import BudgetLedger, PrivacyBudget
from fedcare.privacy.client_level import SiteBudget
from fedcare.runtime.audit import SiteAuditCopy
from fedcare.runtime.checkpoint import read_verified_safetensors, write_atomic_safetensors
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import AuditCopy
from fedcare.runtime.site import SiteMachine, SitePhase

Log = Callable[[str], None]
STATE_FILE = "site-state.safetensors"
LEDGER_FILE = "privacy-ledger.sqlite"
AUDIT_COPY_FILE = "audit-copy.log"  # the coordinator's signed entries that concern this site
STATE_POINT = faults.declare(
    "site.state.write",
    "the site's algorithm state is about to be written to its temporary file: the previous "
    "state file is still in place and nothing that depends on the new state was sent",
)

# Fault points of a site agent (crash tests walk them): its state file, its audit copy,
# and one per kind of message it sends, reached just before the message leaves.
STATE_WRITTEN = faults.declare(
    "site.state.written", "the temporary state file is complete and fsynced, not yet renamed"
)
STATE_RENAMED = faults.declare(
    "site.state.renamed", "the new state file is in place; the replies are not yet sent"
)
AUDIT_COPY_APPENDED = faults.declare(
    "site.audit_copy.appended", "a coordinator audit entry is verified and kept in the copy"
)
SEND_POINTS = {
    kind: faults.declare(f"site.send.{kind}", f"a '{kind}' message is about to be sent")
    for kind in ("hello", "approval_status", "update", "eval_result", "error_report")
}

DEFAULT_GIVE_UP_S = 30 * 60.0


class GaveUpError(FedcareError):
    """The agent stopped retrying: the coordinator stayed unreachable for too long."""


def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def open_budget(
    directory: Path,
    site: str,
    dataset: str,
    epsilon: float | None = None,
    delta: float | None = None,
) -> SiteBudget | None:
    """The site's privacy budget for ``dataset``, from its ledger in ``directory``.

    The first time, pass ``epsilon`` and ``delta`` (recorded in the ledger); later starts
    need neither: a recorded budget is always enforced. A different budget than the one
    recorded is an error (raising a budget is a deliberate act, not a flag). None when no
    budget was ever set for the dataset.
    """
    if (epsilon is None) != (delta is None):
        given = "--budget-epsilon" if delta is None else "--budget-delta"
        raise ConfigError(
            f"a privacy budget needs both --budget-epsilon and --budget-delta; found only {given}"
        )
    path = Path(directory) / LEDGER_FILE
    budget = None if epsilon is None or delta is None else PrivacyBudget(epsilon, delta)
    if budget is None and not path.exists():
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        ledger = BudgetLedger(path, site=site, dataset=dataset, budget=budget)
    except ConfigError:
        if budget is None:  # the ledger holds other datasets' budgets only
            return None
        raise
    return SiteBudget(ledger)


def state_key(machine: SiteMachine) -> str:
    """Changes whenever the machine's state does (it replaces arrays, never edits them)."""
    tensors, meta = machine.checkpoint()
    return json.dumps([meta, sorted((k, id(v)) for k, v in tensors.items())], default=str)


def save_site_state(directory: Path, machine: SiteMachine) -> None:
    """Atomic and digested: a crash mid-write leaves the previous state file intact."""
    tensors, meta = machine.checkpoint()
    write_atomic_safetensors(
        Path(directory) / STATE_FILE,
        tensors,
        {"meta": json.dumps(meta)},
        prefix=".state-",
        write_point=STATE_POINT,
        on_written=lambda: faults.reach(STATE_WRITTEN),
        on_renamed=lambda: faults.reach(STATE_RENAMED),
    )


def load_site_state(directory: Path, machine: SiteMachine) -> bool:
    """Restore the machine from its state file (False if there is none); CheckpointError
    naming the file if it was changed, truncated or is unreadable."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return False
    for stale in Path(directory).glob(".state-*.tmp"):  # a write a crash interrupted
        stale.unlink(missing_ok=True)
    tensors, metadata = read_verified_safetensors(path, "site state file")
    meta = json.loads(metadata.get("meta", "{}"))
    machine.restore(dict(tensors), meta)
    return True


class SiteAgent:
    """Keeps one site connected until its run, or its study's last run, finishes (or
    ``stop`` is set); between a study's runs it reconnects for the next one."""

    def __init__(
        self,
        machine: SiteMachine,
        target: str,
        *,
        bundle: TlsBundle | None,
        state_dir: Path,
        limits: TransportLimits | None = None,
        log: Log = print,
        backoff: Backoff | None = None,
        tick_s: float = 0.5,
        server_name: str | None = None,
        give_up_after_s: float = DEFAULT_GIVE_UP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bundle is not None and bundle.role != "site":
            raise ConfigError(f"bundle of '{bundle.name}' is a {bundle.role} bundle, not a site's")
        self.machine = machine
        self.target = target
        self.bundle = bundle
        self.state_dir = Path(state_dir)
        self.limits = limits or TransportLimits()
        self.log = log
        self.backoff = backoff or Backoff()
        self.tick_s = tick_s
        self.server_name = server_name
        if give_up_after_s <= 0:
            raise ConfigError(f"give_up_after must be > 0 seconds, found {give_up_after_s}")
        self.give_up_after_s = give_up_after_s
        self.clock = clock
        self.outage_since: float | None = None  # when the coordinator was last lost
        self.run_status = ""  # "finished" / "failed" as the coordinator said, "" if unheard
        self.lock = threading.Lock()
        self.session: SiteSession | None = None
        self._saved = ""
        self.storage_failure: StorageError | None = None  # set: stopped, see _stop_on_storage
        self.audit_copy = SiteAuditCopy(self.state_dir / AUDIT_COPY_FILE, machine.name)
        # Coordinator certificates already checked against the study CA: PEM -> (author,
        # audit key, end of validity). Every entry carries the certificate; parsing and
        # verifying it each time cost more than the rest of keeping the entry.
        self._signers: dict[bytes, tuple[str, Ed25519PublicKey, dt.datetime]] = {}
        if load_site_state(self.state_dir, machine):
            log(f"restored this site's algorithm state from {self.state_dir / STATE_FILE}")

    @property
    def finished(self) -> bool:
        return self.machine.phase in (SitePhase.FINISHED, SitePhase.REFUSED)

    def run(self, stop: threading.Event | None = None) -> SitePhase:
        """Work until the run (or the study's last run) ends; raise TransportError when the
        coordinator refuses this site or TLS cannot work, GaveUpError after too long without it."""
        stop = stop or threading.Event()
        ticker = threading.Thread(target=self._tick_loop, args=(stop,), daemon=True)
        ticker.start()
        try:
            while not stop.is_set():
                try:
                    self._connect_guarded(stop)
                except TransportError as exc:
                    if exc.refused:
                        self.log(f"STOPPED: not retrying, this cannot fix itself: {exc}")
                        raise
                    self._retry(stop, str(exc))
                    continue
                if self.finished:
                    break
                if self.machine.phase is SitePhase.WAITING_PLAN and self.machine.study:
                    closed = "the run is over; the study's next run follows"
                else:
                    closed = "coordinator closed the stream"
                self._retry(stop, closed)
        finally:
            stop.set()
            ticker.join(timeout=2)
        return self.machine.phase

    def _connect_guarded(self, stop: threading.Event) -> None:
        """One connection; a write the storage refuses stops the agent (StorageError)."""
        try:
            self._connect_once(stop)
        except TransportError:
            raise
        except (OSError, FedcareError) as exc:
            failure = storage_failure(exc, self.state_dir)
            if failure is None:
                raise
            self._stop_on_storage(failure, stop)
        if self.storage_failure is not None:
            raise self.storage_failure

    def _stop_on_storage(self, failure: StorageError, stop: threading.Event) -> None:
        """Stop here: the state or audit copy could not be made durable, so nothing that
        depends on it is sent; what was written before stays intact."""
        with self.lock:
            if self.storage_failure is not None:
                return
            self.storage_failure = failure
            session, self.session = self.session, None
        self.log(
            f"STOPPED: site '{self.machine.name}': {failure}. Nothing that depends on this "
            "write was sent to the coordinator and what was written before is intact; then "
            "start this agent again (fedcare site start ...): it rejoins the run"
        )
        stop.set()
        if session is not None:
            session.cancel()

    def _retry(self, stop: threading.Event, why: str) -> None:
        """Wait before reconnecting, or give up once the coordinator has been gone for
        ``give_up_after_s`` (said when the outage starts)."""
        now = self.clock()
        if self.outage_since is None:
            self.outage_since = now
            self.log(
                f"retrying for up to {_duration(self.give_up_after_s)} without the coordinator "
                "(--give-up-after)"
            )
        gone = now - self.outage_since
        if gone >= self.give_up_after_s:
            message = (
                f"gave up after {_duration(gone)} without the coordinator at {self.target} "
                f"(last: {why}); the run did not finish at this site. This site's state is "
                f"kept in {self.state_dir}: start the agent again when the coordinator is back"
            )
            self.log(f"STOPPED: {message}")
            raise GaveUpError(message)
        delay = min(self.backoff.next_delay(), self.give_up_after_s - gone)
        self.log(f"{why}; reconnecting in {delay:.1f} s")
        stop.wait(delay)

    def _connect_once(self, stop: threading.Event) -> None:
        session = open_session(
            self.target,
            tls=self.bundle,
            identity_if_insecure=self.machine.name,
            limits=self.limits,
            server_name=self.server_name,
        )
        self.log(f"connected to the coordinator at {self.target}")
        with self.lock:
            self.session = session
            self._send(self.machine.start(time.monotonic()))
        try:
            for env in session:
                self.backoff.reset()  # the coordinator answered: the next outage starts short
                self.outage_since = None
                if env.kind == AuditCopy.KIND:
                    self._keep_audit_entry(env)
                    continue
                if env.kind == NOTICE_KIND:
                    self.log(f"NOTICE from the coordinator: {notice_text(env)}")
                    continue
                with self.lock:
                    self._send(self.machine.handle(env, time.monotonic()))
                if self.finished or stop.is_set():
                    break
        finally:
            with self.lock:
                self.session = None
            session.close()
            if self.finished or stop.is_set():
                session.cancel()

    def _keep_audit_entry(self, env: Envelope) -> None:
        """Verify one of the coordinator's audit entries and append it to this site's copy.

        The signing key comes from the coordinator's certificate, checked against the study
        CA; an entry that fails any check is logged and not kept.
        """
        try:
            if self.bundle is None:
                raise ProtocolError("without TLS (--insecure) the coordinator's key is unknown")
            message = AuditCopy.from_envelope(env)
            author, key = self._signer(message.certificate.encode())
            with self.lock:  # the tick thread's _send syncs the copy
                self.audit_copy.add(message.entry, {author: key}, sync=False)
            faults.reach(AUDIT_COPY_APPENDED)
        except FedcareError as exc:
            self.log(f"audit entry NOT kept: {exc}")

    def _signer(self, pem: bytes) -> tuple[str, Ed25519PublicKey]:
        """The coordinator's name and audit key from its certificate, checked against the
        study CA the first time and again once the certificate's validity has ended (when
        the check refuses it, as it would any expired certificate)."""
        known = self._signers.get(pem)
        if known is not None and still_valid(known[2]):
            return known[0], known[1]
        assert self.bundle is not None  # checked by the caller
        author = check_peer_certificate(pem, self.bundle.ca_pem, set(), role="coordinator")
        key = signing_key_of(pem)
        self._signers[pem] = (author, key, valid_until(pem))
        return author, key

    def _send(self, replies: list[Envelope]) -> None:
        """Persist state and report events first, then send (a crash never loses state
        for an update the coordinator already has). The audit copy's entries received since
        the last send are fsynced here, together, before anything leaves."""
        self.audit_copy.sync()
        events = self.machine.drain_events()
        key = state_key(self.machine)
        if key != self._saved:  # an fsync per message would dominate small models' rounds
            save_site_state(self.state_dir, self.machine)
            self._saved = key
        for ev in events:
            self._report(ev.kind, ev.round, ev.detail)
        if self.session is not None:
            for env in replies:
                point = SEND_POINTS.get(env.kind)
                if point is not None:
                    faults.reach(point)
                self.session.send(env)

    def _report(self, kind: str, round_: int, detail: dict[str, Any]) -> None:
        if kind == "run_finished":
            self.run_status = str(detail.get("status", ""))
        if kind == "data_invalid":
            self.log("DATA CHECK FAILED; nothing will run on this site's data:")
            for problem in detail.get("problems", []):
                self.log(f"  - {problem}")
        elif kind == "model_refused":
            self.log(f"PLAN REFUSED: job plan {detail.get('plan_hash')}: {detail.get('detail')}")
        elif kind == "waiting_approval" and detail.get("study_hash"):
            self.log(
                f"study '{detail.get('study')}' waits for approval: {len(detail['runs'])} runs "
                f"(job plan {detail.get('plan_hash')} is the first to ask):"
            )
            for line in detail["runs"]:
                self.log(f"  {line}")
            self.log(
                "review it with 'fedcare site pending', then approve the whole study once: "
                f"fedcare site approve {detail['study_hash']}"
            )
        elif kind == "waiting_approval":
            self.log(
                f"job plan {detail.get('plan_hash')} waits for approval; review it, then run: "
                f"fedcare site approve {detail.get('plan_hash')}"
            )
        elif kind in {"approved", "run_finished", "coordinator_error", "message_rejected"}:
            self.log(f"{kind.replace('_', ' ')}: {json.dumps(detail, default=str)}")
        elif kind == "budget_refused":
            self.log(
                f"PLAN REFUSED: job plan {detail.get('plan_hash')} does not fit this site's "
                f"privacy budget: {detail.get('detail')}"
            )
        elif kind == "budget_exhausted":
            self.log(
                f"round {int(detail['round']) + 1} NOT TRAINED: it would exceed this site's privacy budget: "
                f"{detail.get('detail')}"
            )
        elif kind == "budget_admitted":
            self.log(
                f"privacy budget: plan {str(detail.get('plan_hash'))[:16]}… will spend epsilon "
                f"{detail.get('planned_epsilon'):.4g} of the {detail.get('remaining_epsilon'):.4g} "
                "left"
            )
        elif kind == "budget_charged":
            self.log(
                f"round {int(detail['round']) + 1}: privacy ledger charged, this job's epsilon "
                f"is now {detail['epsilon']:.4g}"
            )
        elif kind in {"trained", "update_sent"}:
            self.log(f"round {round_ + 1}: {kind.replace('_', ' ')}")
        if kind == "waiting_approval":  # the code that approving it would run here
            for line in detail.get("models", []):
                self.log(f"  the plan builds {line}")

    def _tick_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick_s):
            try:
                with self.lock:
                    if self.session is not None:
                        self._send(self.machine.tick(time.monotonic()))
            except (OSError, FedcareError) as exc:
                failure = storage_failure(exc, self.state_dir)
                if failure is None:
                    raise
                self._stop_on_storage(failure, stop)
