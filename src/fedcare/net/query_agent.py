"""A hospital's agent for ``query`` jobs: the gRPC stream around a :class:`QuerySiteMachine`.

It connects out to the coordinator (mutual TLS; ``--insecure`` on loopback for tests;
reconnecting with back-off when the coordinator is away, e.g. restarting),
says Hello, waits for its owner to approve the query plan's hash (re-reading the approval
store every second), answers the approved plan's questions and stops when the coordinator
says the query ended. Every event (approval, release, refusal) is printed in the
hospital's terminal, and every release is kept in the site's release log
(:mod:`fedcare.runtime.query_release_log`) before it is sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fedcare.net.channel import Backoff, TlsMaterial, TransportError, open_session
from fedcare.privacy.budget import BudgetLedger
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.query_release_log import SiteReleaseLog
from fedcare.runtime.query_site_machine import QuerySiteEvent, QuerySiteMachine, QuerySitePhase
from fedcare.stats.protocol import DisclosureRules, SiteTable


def _describe(event: QuerySiteEvent) -> str:
    d = event.detail
    if event.kind == "released":
        withheld = f"; withheld: {'; '.join(d['suppressed'])}" if d["suppressed"] else ""
        return f"question {d['question']}: released {d['step']} {d['values']}{withheld}"
    if event.kind == "waiting_approval":
        return f"waiting for approval: fedcare site approve {d['plan_hash']}"
    if event.kind == "approved":
        return f"plan {d['plan_hash']} approved ({d['detail']})"
    if event.kind == "question_refused":
        return f"question {d['question']} refused: {d['detail']}"
    if event.kind == "query_finished":
        return f"query {d['status']}{': ' + d['detail'] if d['detail'] else ''}"
    return f"{event.kind}: {d}"


def run_query_site(
    target: str,
    name: str,
    approvals: ApprovalStore,
    table_for: Callable[[str], SiteTable],
    *,
    tls: TlsMaterial | None,
    own_rules: DisclosureRules | None = None,
    ledger: BudgetLedger | None = None,
    schema_sha256: str | None = None,
    server_name: str | None = None,
    give_up_after_s: float = 1800.0,
    release_log: SiteReleaseLog | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Take part in one query job until the coordinator says it ended: its status
    ("finished" or "failed"). A lost or unreachable coordinator (a restart: it resumes
    from its checkpoint) is retried with back-off for ``give_up_after_s``; a refusal that
    retrying cannot fix (certificate, TLS) raises at once. With ``release_log`` every
    release is appended there (and fsynced) before it is sent; if it cannot be, nothing is
    sent and the agent stops with the error."""
    machine = QuerySiteMachine(
        name,
        approvals,
        table_for,
        own_rules=own_rules,
        coordinator="coordinator",
        ledger=ledger,
        schema_sha256=schema_sha256,
    )
    backoff = Backoff()
    deadline = time.monotonic() + give_up_after_s
    while True:
        try:
            _session(machine, target, tls, name, server_name, log, release_log)
            backoff.reset()
        except TransportError as exc:
            if exc.refused:
                raise
            log(f"coordinator unreachable: {exc}")
        if machine.phase is QuerySitePhase.FINISHED:
            return machine.status
        delay = backoff.next_delay()
        if time.monotonic() + delay > deadline:
            return f"gave up after {give_up_after_s / 60:g} minutes without the coordinator"
        log(f"reconnecting in {delay:.1f} s")
        time.sleep(delay)


def _session(
    machine: QuerySiteMachine,
    target: str,
    tls: TlsMaterial | None,
    name: str,
    server_name: str | None,
    log: Callable[[str], None],
    release_log: SiteReleaseLog | None,
) -> None:
    """One connection: Hello, then answer until the query ends or the stream does."""
    session = open_session(
        target,
        tls=tls,
        identity_if_insecure=None if tls is not None else name,
        server_name=server_name,
    )
    lock = threading.Lock()
    stop = threading.Event()

    def flush() -> None:
        for event in machine.drain_events():
            if event.kind == "released" and release_log is not None:
                release_log.record(event.run_id, event.detail)  # fsynced before it is sent
            log(_describe(event))

    def ticker() -> None:  # the owner approves from another terminal
        while not stop.wait(1.0):
            with lock:
                replies = machine.tick()
                flush()
                for env in replies:
                    session.send(env)

    with lock:
        for env in machine.start():
            session.send(env)
    threading.Thread(target=ticker, name="approval-poll", daemon=True).start()
    try:
        for env in session:
            with lock:
                replies = machine.handle(env)
                flush()  # a release is in the site's release log before it leaves
                for reply in replies:
                    session.send(reply)
                if machine.phase is QuerySitePhase.FINISHED:
                    return
    finally:
        stop.set()
        session.close()
