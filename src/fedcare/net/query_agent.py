"""A hospital's agent for ``query`` jobs: the gRPC stream around a :class:`QuerySiteMachine`.

It connects out to the coordinator (mutual TLS; ``--insecure`` on loopback for tests),
says Hello, waits for its owner to approve the query plan's hash (re-reading the approval
store every second), answers the approved plan's questions and stops when the coordinator
says the query ended. Every event (approval, release, refusal) is printed in the
hospital's terminal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fedcare.net.channel import TlsMaterial, open_session
from fedcare.privacy.budget import BudgetLedger
from fedcare.runtime.approvals import ApprovalStore
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
    log: Callable[[str], None] = print,
) -> str:
    """Take part in one query job; its final status ("finished", "failed", or why the
    stream ended)."""
    machine = QuerySiteMachine(
        name,
        approvals,
        table_for,
        own_rules=own_rules,
        coordinator="coordinator",
        ledger=ledger,
        schema_sha256=schema_sha256,
    )
    session = open_session(
        target,
        tls=tls,
        identity_if_insecure=None if tls is not None else name,
        server_name=server_name,
    )
    lock = threading.Lock()
    stop = threading.Event()
    status = "stream closed before the query ended"

    def flush() -> None:
        for event in machine.drain_events():
            log(_describe(event))

    def ticker() -> None:  # the owner approves from another terminal
        while not stop.wait(1.0):
            with lock:
                for env in machine.tick():
                    session.send(env)
                flush()

    with lock:
        for env in machine.start():
            session.send(env)
    thread = threading.Thread(target=ticker, name="approval-poll", daemon=True)
    thread.start()
    try:
        for env in session:
            with lock:
                for reply in machine.handle(env):
                    session.send(reply)
                flush()
                if machine.phase is QuerySitePhase.FINISHED:
                    status = machine.status
                    break
    finally:
        stop.set()
        session.close()
    return status
