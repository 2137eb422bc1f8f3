"""Protocol messages: every message survives a trip through an Envelope; bad headers are named."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.core.metrics import EvalStats
from fedcare.core.records import ClientUpdate
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    NO_RUN,
    ApprovalStatus,
    ErrorReport,
    EvalRequest,
    EvalResult,
    Hello,
    JobPlan,
    RunFinished,
    TrainRequest,
    UpdateMessage,
    UpdateVerdict,
    pack_segments,
    parse_message,
    unpack_segments,
    vector_digest,
)

P = 7


def vec(seed: int = 0, size: int = P) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def through_the_wire(message):
    """What the receiving transport hands the machine: same fields, sender from the certificate."""
    return parse_message(message.to_envelope().from_peer("site-a"))


def test_train_request_carries_the_model_and_the_broadcast_arrays_in_one_vector():
    request = TrainRequest(
        run_id="run-1",
        round=3,
        plan_hash="ab" * 32,
        params=vec(0),
        arrays={"scaffold/control": vec(1)},
        seed=5,
        site_index=2,
        sampled=["a", "b"],
        attempt=1,
        deadline_s=30.0,
    )
    env = request.to_envelope()
    assert env.vector is not None and env.vector.shape == (2 * P,)
    back = through_the_wire(request)
    assert isinstance(back, TrainRequest)
    np.testing.assert_array_equal(back.params, request.params)
    np.testing.assert_array_equal(
        back.arrays["scaffold/control"], request.arrays["scaffold/control"]
    )
    assert (back.round, back.seed, back.site_index, back.attempt) == (3, 5, 2, 1)
    assert back.sampled == ["a", "b"] and back.sender == "site-a"


def test_update_round_trip_keeps_extras_and_hashes_what_was_sent():
    update = ClientUpdate(vec(2), 31.0, {"scaffold/control_delta": vec(3)}, {"train_loss": 0.5})
    message = UpdateMessage.from_update("run-1", 4, 0, update, num_samples=31)
    env = message.to_envelope()
    assert env.header["update_hash"] == vector_digest(env.vector)
    back = through_the_wire(message)
    assert isinstance(back, UpdateMessage)
    restored = back.to_update()
    np.testing.assert_array_equal(restored.delta, update.delta)
    np.testing.assert_array_equal(
        restored.extras["scaffold/control_delta"], update.extras["scaffold/control_delta"]
    )
    assert (restored.weight, back.num_samples, restored.metrics) == (31.0, 31, {"train_loss": 0.5})


def test_eval_result_carries_counts_that_still_add_up():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=50)
    probs = rng.random(50)
    stats = EvalStats.from_predictions(probs, labels, np.ones(50), 2)
    back = through_the_wire(EvalResult("run-1", 2, {"global": stats, "personal": stats}))
    assert isinstance(back, EvalResult)
    for name in ("global", "personal"):
        got = back.stats[name]
        assert got.summary() == stats.summary()
        np.testing.assert_array_equal(got.score_hist, stats.score_hist)


@pytest.mark.parametrize(
    "message",
    [
        Hello(True, {"num_train": 10}, []),
        JobPlan("run-1", 0, {"rounds": 3}, "cd" * 32),
        ApprovalStatus("run-1", 0, "cd" * 32, False, "waiting for approval"),
        UpdateVerdict("run-1", 1, 0, False, "non-finite values"),
        EvalRequest("run-1", 2, vec(4), final=True),
        RunFinished("run-1", 5, "finished", "ef" * 32),
        ErrorReport("run-1", 0, "data_invalid", "column 'age' is missing"),
    ],
)
def test_every_message_survives_an_envelope(message):
    back = through_the_wire(message)
    assert type(back) is type(message)
    for name, value in vars(message).items():
        if name == "sender":
            continue
        got = getattr(back, name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value, name


def test_hello_from_a_site_without_a_run_uses_the_no_run_id():
    assert Hello(False, {}, ["bad"]).to_envelope().run_id == NO_RUN


def test_a_wrong_header_type_is_named_with_the_field_and_the_sender():
    env = UpdateVerdict("run-1", 1, 0, True).to_envelope()
    bad = Envelope(env.kind, env.run_id, env.round, env.nonce, {**env.header, "accepted": "yes"})
    with pytest.raises(ProtocolError, match=r"'update_verdict' from 'mallory'.*'accepted'"):
        parse_message(bad.from_peer("mallory"))


def test_an_unknown_kind_is_refused():
    with pytest.raises(ProtocolError, match="unknown message kind 'launch_missiles'"):
        parse_message(Envelope.create("launch_missiles", "run-1", 0))


def test_segments_that_do_not_tile_the_vector_are_refused():
    env = UpdateMessage("run-1", 1, 0, vec(0), {}, 1.0, 1).to_envelope()
    bad = Envelope(
        env.kind,
        env.run_id,
        1,
        env.nonce,
        {**env.header, "segments": [["delta", P + 1]]},
        env.vector,
    )
    with pytest.raises(ProtocolError, match="segments cover 8 values but the vector has 7"):
        parse_message(bad)


def test_an_update_without_a_float32_vector_is_refused():
    env = UpdateMessage("run-1", 1, 0, vec(0), {}, 1.0, 1).to_envelope()
    bad = Envelope(env.kind, env.run_id, 1, env.nonce, env.header, env.vector.astype(np.float64))
    with pytest.raises(ProtocolError, match="expected float32"):
        parse_message(bad)


def test_eval_counts_must_not_be_negative():
    stats = EvalStats.from_predictions(np.array([0.2, 0.9]), np.array([0, 1]), np.ones(2), 2)
    env = EvalResult("run-1", 1, {"global": stats}).to_envelope()
    forged = env.vector.copy()
    forged[0] = -5
    bad = Envelope(env.kind, env.run_id, 1, env.nonce, env.header, forged)
    with pytest.raises(ProtocolError, match="negative counts"):
        parse_message(bad)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=5))
def test_pack_then_unpack_returns_every_segment(sizes):
    arrays = {f"a{i}": np.arange(n, dtype=np.float32) + i for i, n in enumerate(sizes)}
    vector, segments = pack_segments(arrays)
    assert vector.size == sum(sizes)
    back = unpack_segments(vector, segments, "test")
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)


def test_a_compressed_update_travels_as_bytes_and_parses_back():
    from fedcare.runtime.messages import UpdateMessage, WireDelta

    wire = WireDelta(b"\x01\x02\x03\x04\x05\x06\x07\x08", {"stage": "topk", "fraction": 0.1}, 10)
    extras = {"control": np.arange(3, dtype=np.float32)}
    message = UpdateMessage("run", 2, 0, np.zeros(10, np.float32), extras, 5.0, 5, wire=wire)
    env = message.to_envelope()
    assert env.vector.dtype == np.uint8 and env.nbytes == 8 + 3 * 4
    parsed = UpdateMessage.from_envelope(env.from_peer("site-a"))
    assert parsed.wire == wire
    np.testing.assert_array_equal(parsed.extras["control"], extras["control"])
    broken = Envelope(
        env.kind,
        env.run_id,
        env.round,
        env.nonce,
        {**env.header, "wire": {"stage": "x"}},
        env.vector,
    )
    with pytest.raises(ProtocolError, match="wire"):
        UpdateMessage.from_envelope(broken)
