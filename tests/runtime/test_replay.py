"""ReplayGuard: replays, other runs, late, early and duplicate messages are refused, with the reason."""

from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.runtime.envelope import Envelope
from fedcare.runtime.replay import ReplayGuard


def msg(kind="update", run="run-1", round=0, sender="site-a"):
    return Envelope.create(kind, run, round).from_peer(sender)


def test_a_fresh_message_for_the_open_round_is_admitted():
    guard = ReplayGuard("run-1")
    assert guard.check(msg()) is None


def test_a_replayed_envelope_is_refused_even_from_another_connection():
    guard = ReplayGuard("run-1")
    original = msg()
    assert guard.check(original) is None
    rejection = guard.check(original.from_peer("site-b"))
    assert rejection is not None and rejection.reason == "replayed"
    assert "nonce" in rejection.detail


def test_a_message_for_another_run_is_refused_unless_it_is_a_greeting():
    guard = ReplayGuard("run-1")
    rejection = guard.check(msg(run="run-0"))
    assert rejection is not None and rejection.reason == "wrong_run"
    assert "run 'run-0'" in rejection.detail
    assert guard.check(msg(kind="hello", run="none"), any_run=True) is None


def test_late_and_early_rounds_are_refused_and_say_which_round_is_open():
    guard = ReplayGuard("run-1")
    guard.open_round(3)
    late = guard.check(msg(round=2))
    early = guard.check(msg(round=4))
    assert late is not None and late.reason == "late" and "round 3 is open" in late.detail
    assert early is not None and early.reason == "early"
    assert guard.check(msg(kind="approval_status", round=0), round_bound=False) is None


def test_a_second_update_from_the_same_site_in_a_round_is_a_duplicate():
    guard = ReplayGuard("run-1")
    assert guard.check(msg(), once_per_site="update") is None
    again = guard.check(msg(), once_per_site="update")
    assert again is not None and again.reason == "duplicate"
    assert guard.check(msg(sender="site-b"), once_per_site="update") is None
    guard.open_round(1)
    assert guard.check(msg(round=1), once_per_site="update") is None


def test_rejections_convert_to_protocol_errors_with_the_reason():
    guard = ReplayGuard("run-1")
    rejection = guard.check(msg(run="other"))
    assert rejection is not None
    assert str(rejection.error()).startswith("wrong_run:")


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=400))
def test_memory_stays_bounded_however_many_messages_arrive(capacity, count):
    guard = ReplayGuard("run-1", nonce_capacity=capacity)
    for r in range(count):
        guard.open_round(r)
        guard.check(msg(round=r), once_per_site="update")
    assert guard.remembered <= capacity + 1


def test_a_replay_of_a_closed_round_stays_refused_after_its_nonce_is_forgotten():
    guard = ReplayGuard("run-1", nonce_capacity=1)
    old = msg(round=0)
    assert guard.check(old, once_per_site="update") is None
    guard.open_round(1)
    guard.check(msg(round=1))  # pushes the old nonce out
    rejection = guard.check(old, once_per_site="update")
    assert rejection is not None and rejection.reason == "late"
