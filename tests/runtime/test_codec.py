"""The codec: messages declared once (typed fields, vector layouts) and checked on the way in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import pytest

from fedcare.core.errors import ProtocolError
from fedcare.runtime.codec import SchemaTable, WireMessage
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import NO_RUN, SCHEMAS, ErrorReport, JobPlan, parse_message
from fedcare.runtime.query_messages import QUERY  # noqa: F401 - declares the query messages
from fedcare.runtime.wire_fields import Float32, Json, Strings, Text


def test_every_protocol_message_is_declared_under_its_job_kind():
    jobs = {kind: schema.job for kind, schema in SCHEMAS.items()}
    assert jobs == {
        "hello": "session",
        "job_plan": "session",
        "approval_status": "session",
        "error_report": "session",
        "run_finished": "session",
        "audit_entry": "session",
        "train_request": "train",
        "update": "train",
        "update_verdict": "train",
        "eval_request": "evaluate",
        "eval_result": "evaluate",
        "query_question": "query",
        "query_release": "query",
    }
    assert (SCHEMAS.job_of("secagg"), SCHEMAS.job_of("he")) == ("train", "train")


def test_a_field_with_no_place_on_the_wire_is_refused_when_declared():
    @dataclass(frozen=True)
    class Loose(WireMessage):
        KIND: ClassVar[str] = "loose"
        run_id: str
        round: int
        note: str  # neither in the header nor in a vector layout

    with pytest.raises(TypeError, match="'loose': field 'note' is neither"):
        SchemaTable().declare("query")(Loose)


def test_a_kind_is_declared_once():
    table = SchemaTable()
    table.declare_raw("opaque", "query")
    with pytest.raises(ValueError, match="'opaque' is already declared"):
        table.declare_raw("opaque", "train")


def test_an_optional_field_and_its_companion_travel_only_together():
    plain = JobPlan("run-1", 0, {"rounds": 3}, "ab" * 32).to_envelope()
    assert set(plain.header) == {"plan", "plan_hash"}
    study = JobPlan("run-1", 0, {"rounds": 3}, "ab" * 32, study={"runs": []}, study_hash="cd")
    env = study.to_envelope()
    back = parse_message(env)
    assert isinstance(back, JobPlan)
    assert (back.study, back.study_hash) == ({"runs": []}, "cd")
    no_hash = Envelope(env.kind, env.run_id, 0, env.nonce, {**env.header, "study_hash": 7})
    with pytest.raises(ProtocolError, match="'study_hash' must be a string, found int"):
        parse_message(no_hash)


def test_a_missing_field_is_named_with_what_was_expected():
    env = Envelope.create("error_report", "run-1", 0, {"code": "x"})
    with pytest.raises(
        ProtocolError,
        match=r"message 'error_report' from 'site-a': header field 'message' must be a "
        "string, found nothing",
    ):
        parse_message(env.from_peer("site-a"))


def test_an_error_before_any_run_travels_under_the_no_run_id():
    env = ErrorReport("", 0, "malformed", "bad frame").to_envelope()
    assert env.run_id == NO_RUN


def test_a_message_the_table_does_not_know_cannot_be_sent():
    @dataclass(frozen=True, eq=False)
    class Stray(WireMessage):
        KIND: ClassVar[str] = "stray"
        run_id: str
        round: int

    with pytest.raises(ProtocolError, match="'stray' is not declared in the schema table"):
        Stray("run-1", 0).to_envelope()


def test_a_new_table_encodes_and_checks_its_own_messages():
    table = SchemaTable()

    @table.declare("query", Float32("values"))
    @dataclass(frozen=True, eq=False)
    class Histogram(WireMessage):
        KIND: ClassVar[str] = "histogram"
        run_id: str
        round: int
        values: Any
        bins: Annotated[list[str], Strings()]
        meta: Annotated[dict[str, Any], Json()]
        label: Annotated[str, Text()] = ""
        sender: str = ""

    sent = Histogram("run-1", 2, np.arange(3, dtype=np.float32), ["a", "b", "c"], {"k": 1})
    env = table.encode(sent)
    assert env.header == {"bins": ["a", "b", "c"], "meta": {"k": 1}, "label": ""}
    back = table.decode(env.from_peer("site-b"))
    assert isinstance(back, Histogram)
    np.testing.assert_array_equal(back.values, sent.values)
    assert (back.bins, back.meta, back.round, back.sender) == (sent.bins, sent.meta, 2, "site-b")
    wrong = Envelope(env.kind, env.run_id, 2, env.nonce, env.header, env.vector.astype(np.int64))
    with pytest.raises(ProtocolError, match="carries int64, expected float32"):
        table.decode(wrong)
