"""The router: (job kind, phase, message kind) -> handler, over a schema table's declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import pytest

from fedcare.core.errors import ProtocolError
from fedcare.runtime.codec import SchemaTable, WireMessage
from fedcare.runtime.coordinator import COORDINATOR_ROUTES
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import SCHEMAS
from fedcare.runtime.query_coordinator import QUERY_COORDINATOR_ROUTES
from fedcare.runtime.query_site_machine import QUERY_SITE_ROUTES
from fedcare.runtime.router import ANY, Routed, Router, Unrouted
from fedcare.runtime.site import SITE_ROUTES
from fedcare.runtime.wire_fields import Integer

TABLE = SchemaTable()


@TABLE.declare("query")
@dataclass(frozen=True, eq=False)
class Ask(WireMessage):
    KIND: ClassVar[str] = "ask"
    run_id: str
    round: int
    limit: Annotated[int, Integer(minimum=1)]
    sender: str = ""


TABLE.declare_raw("opaque", "query")


def ask(limit: int = 3) -> Envelope:
    return TABLE.encode(Ask("run-1", 0, limit))


def named(name: str):
    """A handler that says which one it is and what it was given."""
    return lambda machine, env, message: [(name, machine, message)]


def router() -> Router[str, tuple]:
    return Router("test", TABLE)


def test_a_handler_for_the_machines_phase_beats_one_for_any_phase():
    r = router()
    r.on("query", ANY, "ask", named("anytime"))
    r.on("query", "busy", "ask", named("when busy"))
    busy = r.route(ask(), "busy")
    idle = r.route(ask(), "idle")
    assert isinstance(busy, Routed) and isinstance(idle, Routed)
    [(name, machine, message)] = busy("the machine", ask())
    assert (name, machine, message.limit) == ("when busy", "the machine", 3)
    assert idle("m", ask())[0][0] == "anytime"


def test_a_kind_without_a_handler_in_this_phase_says_where_it_has_one():
    r = router()
    r.on("query", "busy", "ask", named("when busy"))
    assert r.route(ask(), "idle") == Unrouted("ask", "idle", ("busy",))
    assert router().route(ask(), "idle") == Unrouted("ask", "idle", ())


def test_a_raw_kind_reaches_its_handler_undecoded():
    r = router()
    r.on("query", ANY, "opaque", named("raw"))
    env = Envelope.create("opaque", "run-1", 0, {"anything": [1, 2]})
    routed = r.route(env, "idle")
    assert isinstance(routed, Routed) and routed.message is None


def test_routing_decodes_with_the_codec_so_a_bad_message_never_reaches_a_handler():
    r = router()
    r.on("query", ANY, "ask", named("anytime"))
    bad = Envelope.create("ask", "run-1", 0, {"limit": 0})
    with pytest.raises(ProtocolError, match="'limit' must be an integer from 1"):
        r.route(bad, "idle")
    with pytest.raises(ProtocolError, match="unknown message kind 'tell'"):
        r.route(Envelope.create("tell", "run-1", 0), "idle")


def test_registrations_that_contradict_the_schema_table_are_refused():
    r = router()
    with pytest.raises(ValueError, match="'tell' is not declared in the schema table"):
        r.on("query", ANY, "tell", named("x"))
    with pytest.raises(ValueError, match="'ask' belongs to job kind 'query', not 'train'"):
        r.on("train", ANY, "ask", named("x"))
    r.on("query", ANY, "ask", named("x"))
    with pytest.raises(ValueError, match=r"\(query, \*, ask\) already has a handler"):
        r.on("query", ANY, "ask", named("y"))
    r.off("query", ANY, "ask")
    r.on("query", ANY, "ask", named("y"))  # withdrawn, then registered again


def test_each_machine_routes_what_the_other_sends_and_a_site_trains_only_when_ready():
    assert set(COORDINATOR_ROUTES.routes()) == {
        ("session", ANY, "hello"),
        ("session", ANY, "approval_status"),
        ("session", ANY, "error_report"),
        ("train", ANY, "update"),
        ("train", ANY, "secagg"),
        ("train", ANY, "he"),
        ("evaluate", ANY, "eval_result"),
    }
    assert set(SITE_ROUTES.routes()) == {
        ("session", ANY, "job_plan"),
        ("session", ANY, "error_report"),
        ("session", ANY, "run_finished"),
        ("train", "ready", "train_request"),
        ("train", "ready", "update_verdict"),
        ("train", ANY, "secagg"),
        ("train", ANY, "he"),
        ("evaluate", "ready", "eval_request"),
    }
    # Every declared kind has a receiver (the query job's on its own machines' routers);
    # the site agent takes audit entries itself (it verifies the coordinator's signature
    # before anything else reads them).
    routers = [COORDINATOR_ROUTES, SITE_ROUTES, QUERY_COORDINATOR_ROUTES, QUERY_SITE_ROUTES]
    routed = {kind for router in routers for _, _, kind in router.routes()}
    assert set(SCHEMAS) - routed == {"audit_entry"}
