"""An envelope is checked once where it is created or received; what changes it (a
vector added on arrival, a header built anew) is checked again."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope


def test_a_checked_envelope_stays_checked_when_its_sender_is_stamped() -> None:
    env = Envelope.create("train_request", "run-1", 2, {"seed": 7})
    stamped = env.from_peer("va")
    assert stamped.sender == "va" and stamped == replace(env, sender="va")
    stamped.validate()  # passes, and needs no second walk of the header


def test_a_vector_added_to_a_checked_head_is_itself_checked() -> None:
    head = Envelope.create("update", "run-1", 0, {"n": 3})
    assert head.with_vector(np.zeros(3, np.float32)).nbytes == 12
    with pytest.raises(ProtocolError, match="vector must be flat"):
        head.with_vector(np.zeros((1, 3), np.float32))
    with pytest.raises(ProtocolError, match="vector dtype complex64 is not one of"):
        head.with_vector(np.zeros(3, np.complex64))


def test_an_envelope_built_field_by_field_or_rebuilt_is_checked_in_full() -> None:
    raw = Envelope("update", "run-1", 0, b"\0" * 16, {"n": 2**70})  # e.g. decoded off the wire
    with pytest.raises(ProtocolError, match="integer of 71 bits"):
        raw.with_vector(np.zeros(3, np.float32))
    good = Envelope.create("update", "run-1", 0, {"n": 1})
    with pytest.raises(ProtocolError, match="not JSON-safe"):
        replace(good, header={"n": float("nan")}).validate()
