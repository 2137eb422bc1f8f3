"""A coordinator that dies during an evaluation comes back with the round it aggregated.

The evaluation request tells sites the round counted (``contributed``), and sites commit
their new algorithm state on it. So the round's aggregate is checkpointed before that
request leaves (the ``round_completed`` event carries the snapshot), and a coordinator
restored from it sends the evaluation again instead of re-running a round the sites
already counted. A coordinator restored from an older state than the sites hold stops,
naming why, instead of training on without them.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.runtime.coordinator import CoordinatorMachine, Phase, RuntimeEvent
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import Loopback, deploy, heart_plan

ROUNDS = 3


@pytest.fixture(scope="module")
def toy():
    return make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)


def connect_all(net: Loopback) -> None:
    for name in net.sites:
        net.connect(name)


def run_keeping_snapshots(net: Loopback, stop) -> list[RuntimeEvent]:
    """Run until ``stop``; return the events that carried a checkpoint (as a driver
    would have written them)."""
    kept: list[RuntimeEvent] = []

    def done() -> bool:
        kept.extend(e for e in net.coordinator.drain_events() if e.snapshot is not None)
        return stop()

    net.run(stop=done)
    return kept


def evaluated_by_some(net: Loopback, round_: int):
    """Stop once round ``round_`` (0-based) is aggregated and two sites counted it."""

    def stop() -> bool:
        committed = [s for s in net.sites.values() if s.committed_round == round_]
        return net.coordinator.phase is Phase.EVALUATING and len(committed) == 2

    return stop


def restart_from(net: Loopback, plan, event: RuntimeEvent) -> None:
    """kill -9 of the coordinator, then resume from ``event``'s checkpoint."""
    assert event.snapshot is not None
    state, extra = event.snapshot
    net.coordinator = CoordinatorMachine.restore(plan, state, extra)
    net.queue.clear()
    connect_all(net)  # the agents reconnect with back-off


def test_a_kill_during_evaluation_resumes_with_the_aggregated_round_to_the_same_model(
    toy, tmp_path
):
    plan = heart_plan(toy, "scaffold", rounds=ROUNDS)  # per-site state that must commit once
    reference = deploy(toy, plan, tmp_path / "reference")
    connect_all(reference)
    reference.run()
    assert reference.coordinator.phase is Phase.FINISHED

    net = deploy(toy, plan, tmp_path / "crash")
    connect_all(net)
    kept = run_keeping_snapshots(net, evaluated_by_some(net, 1))
    last = kept[-1]
    assert (last.kind, last.snapshot[1]["stage"]) == ("round_completed", "aggregated")

    restart_from(net, plan, last)
    assert net.coordinator.round == 2 and net.coordinator.completed is not None
    net.run()
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FINISHED, coordinator.failure
    np.testing.assert_array_equal(coordinator.final_params, reference.coordinator.final_params)
    assert [r["round"] for r in coordinator.history] == [1, 2, 3]
    assert all(len(r["participants"]) == 4 for r in coordinator.history)
    second = coordinator.history[1]
    assert second["pooled_metrics"] == reference.coordinator.history[1]["pooled_metrics"]


def test_a_coordinator_behind_what_the_sites_counted_stops_and_says_why(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", rounds=ROUNDS)
    net = deploy(toy, plan, tmp_path)
    connect_all(net)
    kept = run_keeping_snapshots(net, evaluated_by_some(net, 1))
    older = [e for e in kept if e.kind == "round_finished"][-1]  # after round 1, not 2
    restart_from(net, plan, older)
    net.run()
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FAILED  # never a silent "finished" without them
    assert "already counted" in coordinator.failure
    assert "checkpoint is older than what the sites already counted" in coordinator.failure
