"""Every decoder turns malformed input into a typed error (issue 11, item 7).

A seeded, CI-sized run of the fuzzer of ``benchmarks/fuzz_decoders.py``, then one
example per crash that fuzzing found, each as it reached the receiver before the fix.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import replace

import numpy as np
import pytest

from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.net.header_json import json_depth
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.net.serde import FrameAssembler, head_frame
from fedcare.net.wire_fuzz import (
    RUN_ID,
    SITES,
    DecoderBench,
    mutated_case,
    plan_for,
    random_case,
)
from fedcare.runtime.coordinator import Phase
from fedcare.runtime.envelope import Envelope, new_nonce
from fedcare.runtime.messages import ErrorReport, EvalResult, parse_message
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.secure_wire import session_of

CASES = 1500  # of each kind: a few seconds


@pytest.fixture(scope="module")
def bench() -> DecoderBench:
    return DecoderBench(0)


@pytest.mark.parametrize("kind", ["mutated", "random"])
def test_fuzzed_messages_end_in_typed_errors_never_internal_ones(
    bench: DecoderBench, kind: str
) -> None:
    make = mutated_case if kind == "mutated" else random_case
    internal, delivered = [], 0
    for i in range(CASES):
        case = make(bench, random.Random(f"ci:{kind}:{i}"))
        try:
            delivered += bench.decode(case.frames, case.receiver) > 0
        except FedcareError:
            pass
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            internal.append(
                f"case {i} ({case.mutation}): {exc!r} at {where.filename}:{where.lineno}"
            )
        bench.refill()
    assert internal == []
    assert delivered > CASES // 20  # the fuzz reaches the parsers, not only the frame checks


def head(kind: str, header_json: str, **fields: object) -> bytes:
    return head_frame(
        pb.Head(kind=kind, run_id=RUN_ID, nonce=new_nonce(), header_json=header_json, **fields)
    )


def refusal(frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        FrameAssembler().feed_bytes(frame)
    return str(info.value)


def test_a_header_nested_100000_deep_is_refused_before_it_is_parsed() -> None:
    nested = "[" * 100_000 + "]" * 100_000  # was RecursionError inside json.loads
    text = refusal(head("update", f'{{"metrics":{nested}}}'))
    assert text == ("message 'update': header is nested 100001 levels deep; at most 32 are allowed")


def test_a_header_number_of_10_to_the_400_is_refused_naming_the_message() -> None:
    text = refusal(head("update", '{"weight":1' + "0" * 400 + "}"))
    assert text.startswith("message 'update': header is not valid JSON: integer of 401 digits")
    assert "not a finite float" in refusal(head("update", '{"weight":1e400}'))


def test_a_lone_surrogate_in_a_header_string_is_refused() -> None:
    # It parsed, then crashed hashing the plan (UnicodeEncodeError) at the site.
    text = refusal(head("job_plan", '{"plan_hash":"\\ud800","plan":{}}'))
    assert "holds a string that is not valid Unicode" in text


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert json_depth('{"a":"[[[{{{\\"]]]","b":[[1]]}') == 3
    assert json_depth('["\\\\", [[]]]') == 3  # an escaped backslash ends before the quote


def envelope(kind: str, header: dict, vector: np.ndarray | None = None) -> Envelope:
    """An envelope as a broken peer could have produced it (no sender-side checks)."""
    return Envelope(kind, RUN_ID, 0, new_nonce(), header, vector, sender=SITES[0])


def test_an_update_weight_too_large_for_a_float_is_refused_with_the_message_named() -> None:
    # Was OverflowError from float(10**400) in the update's header parser.
    vector = np.zeros(4, np.float32)
    header = {
        "attempt": 0,
        "weight": 10**400,
        "num_samples": 1,
        "metrics": {},
        "segments": [["delta", 4]],
        "update_hash": "",
    }
    with pytest.raises(ProtocolError, match="'update' header holds an integer of 1329 bits"):
        parse_message(envelope("update", header, vector))
    header["weight"] = "heavy"
    with pytest.raises(ProtocolError, match="field 'weight' must be a finite number, found str"):
        parse_message(envelope("update", header, vector))


@pytest.mark.parametrize(
    ("models", "match"),
    [
        ([["global", 2]], "each entry of 'models' must be a mapping with a 'name', found list"),
        ([{"num_classes": 2}], "found no string 'name'"),  # was KeyError
        ([{"name": "global", "num_classes": 2, "count": 1, "loss": "0.5"}], "non-finite loss"),
    ],
)
def test_evaluation_model_entries_are_checked_before_they_are_read(
    models: list, match: str
) -> None:
    header = {"models": models, "segments": [["global/confusion", 4]]}
    with pytest.raises(ProtocolError, match=match):
        parse_message(envelope("eval_result", header, np.zeros(4, np.int64)))


def test_a_secagg_session_in_non_ascii_text_is_a_field_error() -> None:
    # Was ValueError from base64 ("string argument should contain only ASCII characters").
    env = envelope("secagg", {"step": "advertise_keys", "session": "séssion", "attempt": 0})
    with pytest.raises(ProtocolError, match="field 'session' must be base64 text"):
        session_of(env)


def test_a_job_plan_with_a_list_where_a_number_belongs_is_a_plan_error() -> None:
    # Was TypeError from float([...]) while the site built the plan's upload stages.
    plan = plan_for("fedavg", {"upload": [{"stage": "clip", "max_norm": [1]}]}).to_dict()
    with pytest.raises(ConfigError, match="job plan is malformed: TypeError"):
        RunPlan.from_dict(plan)


def test_a_malformed_evaluation_gets_an_error_back_and_the_round_finishes_with_the_others(
    bench: DecoderBench,
) -> None:
    machine = bench.machine_for(envelope("eval_result", {}))
    assert machine.phase is Phase.EVALUATING
    liar, *honest = SITES
    bad = envelope("eval_result", {"models": [["global"]], "segments": []}, np.zeros(0, np.int64))
    bad = replace(bad, round=machine.round)  # the round just trained, as evaluated
    (answer,) = machine.handle(bad, 3.0)
    assert answer.recipient == liar
    report = ErrorReport.from_envelope(answer.envelope)
    assert report.code == "malformed" and "'models' must be a mapping" in report.message
    stats = EvalResult.from_envelope(
        next(s.envelope for s in bench.seeds if s.envelope.kind == "eval_result")
    ).stats
    for site in honest:
        result = EvalResult(RUN_ID, machine.round, stats).to_envelope()
        assert machine.handle(result.from_peer(site), 4.0) == []
    machine.tick(1e6)  # the liar never sends a valid evaluation: its deadline passes
    (round_,) = machine.history
    assert sorted(round_["site_metrics"]) == sorted(honest)
    assert machine.phase is Phase.TRAINING  # round 2 has started
