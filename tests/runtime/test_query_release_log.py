"""A site's release log for query jobs, and its cross-check against the coordinator's log.

The machines run over an in-memory link (every message through the codec); the site's
``released`` events go to its :class:`SiteReleaseLog` and the coordinator's
``query_release`` events to an audit log, as the deployed agent and server write them.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import AuditLog, verify
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.query_coordinator import QueryCoordinator, QueryPhase
from fedcare.runtime.query_plan import AnalysisSpec, QueryPlan
from fedcare.runtime.query_release_log import (
    SENT,
    SiteReleaseLog,
    compare_releases,
    local_signing_key,
)
from fedcare.runtime.query_run import values_digest
from fedcare.runtime.query_site_machine import QuerySiteMachine
from fedcare.stats.protocol import DisclosureRules
from fedcare.stats.site_tables import tcga_brca_site_tables

SITES = ("south", "west")
COORDINATOR_KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def tables():
    every = tcga_brca_site_tables("all")
    return {name: every[name] for name in SITES}


def km_plan() -> QueryPlan:
    return QueryPlan(
        name="km-only",
        dataset="tcga-brca",
        sites=SITES,
        analyses=(AnalysisSpec("km", "km", {}),),
        rules=DisclosureRules(min_cell=1),
    )


def run_query(tables, tmp_path: Path) -> tuple[Path, dict[str, Path], dict[str, Ed25519PrivateKey]]:
    """The whole query over an in-memory link: the coordinator's log and each site's."""
    plan = km_plan()
    coordinator = QueryCoordinator(plan, "q-1")
    keys = {s: Ed25519PrivateKey.generate() for s in SITES}
    logs = {s: tmp_path / s / "query-releases.log" for s in SITES}
    release_logs = {s: SiteReleaseLog(logs[s], s, keys[s]) for s in SITES}
    audit = AuditLog(tmp_path / "audit.log")
    sites = {}
    for s in SITES:
        store = ApprovalStore(tmp_path / s / "approvals.json")
        store.approve(plan.hash, by="owner")
        sites[s] = QuerySiteMachine(s, store, lambda _split, s=s: tables[s])
    queue: deque[tuple[str, str, Envelope]] = deque()
    for s in SITES:
        coordinator.site_connected(s)
        queue.extend(("coordinator", s, env) for env in sites[s].start())
    while queue:
        to, sender, env = queue.popleft()
        if to == "coordinator":
            for out in coordinator.handle(env.from_peer(sender)):
                queue.append((out.recipient, "coordinator", out.envelope))
            for event in coordinator.drain_events():  # as QueryLinks._persist writes them
                body = {"run_id": event.run_id, "question": event.round, **event.detail}
                if event.site:
                    body["site"] = event.site
                audit.append(event.kind, "coordinator", body, COORDINATOR_KEY)
        else:
            replies = sites[to].handle(env.from_peer(sender))
            for event in sites[to].drain_events():  # as the agent does, before sending
                if event.kind == "released":
                    release_logs[to].record(event.run_id, event.detail)
            queue.extend(("coordinator", to, reply) for reply in replies)
    assert coordinator.phase is QueryPhase.FINISHED, coordinator.failure
    return audit.path, logs, keys


def test_every_release_is_in_the_sites_signed_log_with_the_digest_the_coordinator_recorded(
    tables, tmp_path
):
    audit, logs, keys = run_query(tables, tmp_path)
    for site in SITES:
        assert verify(logs[site], {site: keys[site].public_key()}).ok
        sent = AuditLog(logs[site]).entries()
        assert sent and all(e.kind == SENT and e.author == site for e in sent)
        received = [
            e
            for e in AuditLog(audit).entries()
            if e.kind == "query_release" and e.body["site"] == site
        ]
        assert [(e.body["question"], e.body["values_sha256"]) for e in sent] == [
            (e.body["question"], e.body["values_sha256"]) for e in received
        ]
        assert all(e.body["epsilon"] == 0.0 for e in sent)  # the plan adds no noise
        assert compare_releases(audit, logs[site], site) == []


def rewrite(log: Path, edit) -> None:
    """``log`` with every entry's body passed through ``edit`` (None drops the entry),
    appended afresh: a rewritten log whose own chain is intact."""
    entries = AuditLog(log).entries()
    log.unlink()
    fresh = AuditLog(log)
    for entry in entries:
        body = edit(entry.kind, dict(entry.body))
        if body is not None:
            fresh.append(entry.kind, entry.author, body, COORDINATOR_KEY)


def test_a_coordinator_log_that_hides_or_alters_a_release_is_caught_by_the_sites_log(
    tables, tmp_path
):
    audit, logs, _ = run_query(tables, tmp_path)

    def drop_south_first(kind, body):
        hidden = kind == "query_release" and body["site"] == "south" and body["question"] == 0
        return None if hidden else body

    rewrite(audit, drop_south_first)
    [problem] = compare_releases(audit, logs["south"], "south")
    assert problem.kind == "missing"
    assert "run 'q-1' question 0 (km/" in problem.message and "'south'" in problem.message
    assert compare_releases(audit, logs["west"], "west") == []

    def alter_west(kind, body):
        if kind == "query_release" and body["site"] == "west":
            body["values_sha256"] = values_digest({"n": [1.0]})
        return body

    rewrite(audit, alter_west)
    problems = compare_releases(audit, logs["west"], "west")
    assert {p.kind for p in problems} == {"differs", "missing"}
    assert any("does not hold" in p.message for p in problems)


def test_a_question_asked_again_after_a_coordinator_restart_matches_either_answer(tmp_path):
    key = Ed25519PrivateKey.generate()
    site_log = SiteReleaseLog(tmp_path / "site.log", "south", key)
    detail = {"analysis": "km", "step": "counts", "suppressed": [], "epsilon": 0.5}
    for digest in ("aa" * 32, "bb" * 32):  # noised answers differ when asked again
        site_log.record("q-1", {**detail, "question": 3, "values_sha256": digest})
    audit = AuditLog(tmp_path / "audit.log")
    body = {"run_id": "q-1", "question": 3, "site": "south", "analysis": "km", "step": "counts"}
    audit.append("query_release", "coordinator", {**body, "values_sha256": "bb" * 32}, key)
    assert compare_releases(audit.path, site_log.log.path, "south") == []
    [entry, _] = site_log.log.entries()
    assert json.loads(entry.to_json())["body"]["epsilon"] == 0.5


def test_a_site_without_a_bundle_keeps_one_signing_key_across_starts(tmp_path):
    path = tmp_path / "state" / "release-signing.key"
    first = local_signing_key(path)
    again = local_signing_key(path)
    assert first.public_key() == again.public_key()
    assert path.stat().st_mode & 0o077 == 0  # readable by the site's account only


def test_a_release_summed_securely_matches_the_sites_entry_without_a_digest(tmp_path):
    key = Ed25519PrivateKey.generate()
    site_log = SiteReleaseLog(tmp_path / "site.log", "south", key)
    detail = {"analysis": "km", "step": "counts", "suppressed": [], "epsilon": 0.0}
    site_log.record("q-1", {**detail, "question": 1, "values_sha256": "aa" * 32})
    audit = AuditLog(tmp_path / "audit.log")
    body = {"run_id": "q-1", "site": "south", "analysis": "km", "step": "counts"}
    for question in (1, 2):  # the coordinator saw a layout only: no digest to compare
        audit.append(
            "query_release", "coordinator", {**body, "question": question, "secure": "secagg"}, key
        )
    [problem] = compare_releases(audit.path, site_log.log.path, "south")
    assert problem.kind == "differs" and "question 2" in problem.message
