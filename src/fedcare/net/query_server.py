"""Serve a deployed ``query`` job: the gRPC transport around a :class:`QueryCoordinator`.

Same transport, certificates and audit log as a training run. Every event of the machine
is appended to the study folder's signed ``audit.log`` (one entry per release: site,
question, arrays and shapes, what was withheld), and each combined step's memo is written
to ``query-checkpoint.json`` (atomically) before the next question is sent, so a
coordinator started again on the same folder continues from the step it had reached
(:func:`load_checkpoint`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.data.json_file import read_json
from fedcare.net.audit_signers import record_signer
from fedcare.net.channel import CoordinatorServer, Link
from fedcare.net.coordinator_server import Security
from fedcare.net.run_files import write_json_atomic
from fedcare.runtime.audit import AuditLog
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.query_coordinator import QueryCoordinator, QueryEvent
from fedcare.runtime.query_plan import QueryPlan

CHECKPOINT = "query-checkpoint.json"
MAX_CHECKPOINT_BYTES = 256 << 20


def load_checkpoint(folder: Path, plan: QueryPlan) -> Mapping[str, Any] | None:
    """The memo of the last combined step in ``folder`` (None when there is none); one
    written for another plan is refused, naming both hashes."""
    path = folder / CHECKPOINT
    if not path.exists():
        return None
    data = read_json(path, "query checkpoint", MAX_CHECKPOINT_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("memo"), dict):
        raise ConfigError(f"{path}: not a fedcare query checkpoint")
    if data.get("plan_hash") != plan.hash:
        raise ConfigError(
            f"{path}: written for plan {data.get('plan_hash')}, not this plan {plan.hash}; "
            "use another --out folder for another query"
        )
    memo: Mapping[str, Any] = data["memo"]
    return memo


class QueryLinks:
    """The coordinator's handler of its sites' streams (called from reader threads)."""

    def __init__(
        self,
        machine: QueryCoordinator,
        folder: Path,
        security: Security,
        log: Callable[[str], None],
    ) -> None:
        self.machine = machine
        self.folder = folder
        self.security = security
        self.log = log
        self.audit = AuditLog(folder / "audit.log")
        self.key = security.signing_key()
        self.links: dict[str, Link] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def connected(self, link: Link) -> None:
        with self.lock:
            self.links[link.identity] = link
            self.machine.site_connected(link.identity)
            self.log(f"site {link.identity} connected from {link.peer}")

    def received(self, link: Link, env: Envelope) -> None:
        with self.lock:
            out = self.machine.handle(env)
            self._persist(self.machine.drain_events())  # durable before anything is sent
            for message in out:
                target = self.links.get(message.recipient)
                if target is not None:
                    target.send(message.envelope)
            if self.machine.done:
                self.done.set()

    def disconnected(self, link: Link, reason: str) -> None:
        with self.lock:
            if self.links.get(link.identity) is link:
                del self.links[link.identity]
                self.machine.site_disconnected(link.identity)
                self.log(f"site {link.identity} disconnected: {reason or 'closed'}")

    def _persist(self, events: list[QueryEvent]) -> None:
        for event in events:
            if event.memo is not None:
                write_json_atomic(
                    self.folder / CHECKPOINT,
                    {"plan_hash": self.machine.plan.hash, "memo": event.memo},
                )
            body = {"run_id": event.run_id, "question": event.round, **event.detail}
            if event.site:
                body["site"] = event.site
            self.audit.append(event.kind, self.security.author, body, self.key)
            self.log(_describe(event))


def _describe(event: QueryEvent) -> str:
    d = event.detail
    if event.kind == "query_release":
        withheld = f", {len(d['suppressed'])} withheld" if d.get("suppressed") else ""
        return f"question {event.round}: {event.site} released {d['step']}{withheld}"
    if event.kind == "query_step":
        done = f"; analysis '{d['finished']}' done" if "finished" in d else ""
        return f"question {event.round - 1} ({d['analysis']}/{d['step']}) combined{done}"
    if event.kind == "query_failed":
        return f"query failed: {d['reason']}"
    if event.kind == "query_finished":
        return f"query finished: {d['analyses']} analyses"
    site = f" {event.site}" if event.site else ""
    return f"{event.kind}{site}"


def serve_query(
    plan: QueryPlan,
    address: str,
    security: Security,
    folder: Path,
    *,
    run_id: str,
    insecure: bool = False,
    port_file: Path | None = None,
    timeout_s: float = 3600.0,
    log: Callable[[str], None] = print,
) -> QueryCoordinator:
    """Run the query until it finishes or fails (or ``timeout_s`` passes): the machine."""
    folder.mkdir(parents=True, exist_ok=True)
    if security.bundle is not None:  # `fedcare audit verify` finds the signer beside the log
        record_signer(folder, security.bundle)
    memo = load_checkpoint(folder, plan)
    machine = (
        QueryCoordinator(plan, run_id)
        if memo is None
        else QueryCoordinator.restore(plan, run_id, memo)
    )
    if memo is not None:
        log(f"resuming from {CHECKPOINT}: {machine.run.asked} question(s) already combined")
    links = QueryLinks(machine, folder, security, log)
    server = CoordinatorServer(
        address, links, tls=security.bundle, peer_check=security.peer_check(), insecure=insecure
    )
    port = server.start()
    if port_file is not None:
        port_file.write_text(str(port))
    log(f"query '{plan.name}' listening on port {port}; plan hash {plan.hash}")
    try:
        if not links.done.wait(timeout_s):
            raise ConfigError(
                f"query '{plan.name}' did not finish within {timeout_s:.0f} s; waiting for: "
                + ", ".join(sorted(set(plan.sites) - set(links.links)) or ["answers"])
            )
        time.sleep(0.5)  # let the run_finished messages leave before the streams close
        with links.lock:
            for link in links.links.values():
                link.close()
    finally:
        server.stop()
    return machine
