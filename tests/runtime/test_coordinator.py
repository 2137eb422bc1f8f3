"""CoordinatorMachine: dropouts, deadlines, rejoin, replay, malformed updates, retries, resume.

Each scenario drives the real machines (real local training on small sites) through the
in-memory loopback of test_protocol_study, and where it matters compares the final model
with an uninterrupted run's.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.runtime.checkpoint import load_checkpoint, save_checkpoint
from fedcare.runtime.coordinator import CoordinatorMachine, CoordinatorOptions, Phase
from fedcare.runtime.envelope import Envelope, new_nonce
from fedcare.runtime.sampling import Participation
from fedcare.runtime.site import DataCheck, SiteMachine
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import Loopback, deploy, heart_plan

ROUNDS = 3


@pytest.fixture(scope="module")
def toy():
    """Four small sites: these scenarios exercise the protocol, not the heart data."""
    return make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)


def connect_all(net: Loopback) -> None:
    for name in net.sites:
        net.connect(name)


def events(net: Loopback) -> list:
    return net.coordinator.drain_events()


def uninterrupted(toy, plan, tmp_path):
    net = deploy(toy, plan, tmp_path / "reference")
    connect_all(net)
    net.run()
    return net.coordinator.final_params.copy()


class Wrapper:
    """A site whose replies a test can tamper with or hold back."""

    def __init__(self, site: SiteMachine, mutate) -> None:
        self.site = site
        self.mutate = mutate

    def __getattr__(self, name):
        return getattr(self.site, name)

    def handle(self, env, now):
        return self.mutate(env, self.site.handle(env, now))


def test_a_site_that_disconnects_mid_round_is_dropped_and_rejoins_next_round(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=ROUNDS), tmp_path)
    connect_all(net)
    victim = toy.site_names[1]
    net.run(stop=lambda: net.coordinator.phase is Phase.TRAINING)
    net.disconnect(victim)  # its train request and anything it sent are lost
    net.run(stop=lambda: len(net.coordinator.history) == 1)
    first = net.coordinator.history[0]
    assert victim not in first["participants"] and len(first["participants"]) == 3
    assert first["missing"] == {victim: "disconnected during the round"}
    dropped = [e for e in events(net) if e.kind == "site_dropped"]
    assert [(e.site, e.detail["reason"]) for e in dropped] == [
        (victim, "disconnected during the round")
    ]
    # The hospital restarts its agent: a fresh machine, same approvals on disk.
    net.sites[victim] = SiteMachine(
        victim,
        net.sites[victim].approvals,
        net.sites[victim].data,
        net.sites[victim].work_factory,
    )
    net.connect(victim)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert victim in net.coordinator.history[-1]["participants"]


def test_a_straggler_past_the_deadline_is_dropped_from_that_round_only(toy, tmp_path):
    options = CoordinatorOptions(round_timeout_s=30.0)
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=2), tmp_path, options)
    slow = toy.site_names[0]
    held = []

    def hold_first_update(env, replies):
        if env.kind == "train_request" and not held:
            held.extend(replies)
            return []
        return replies

    net.sites[slow] = Wrapper(net.sites[slow], hold_first_update)
    connect_all(net)
    net.run()
    assert net.coordinator.round == 0  # waiting for the straggler
    net.tick(31.0)
    net.run(stop=lambda: len(net.coordinator.history) == 1)
    assert slow not in net.coordinator.history[0]["participants"]
    late = held[0].from_peer(slow)
    verdict = net.coordinator.handle(late, net.now)  # it finally arrives
    assert verdict[0].envelope.header["accepted"] is False
    assert "late" in verdict[0].envelope.header["reason"]
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert slow in net.coordinator.history[1]["participants"]


def test_a_malformed_update_is_rejected_with_its_reason_and_the_round_goes_on(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=2), tmp_path)
    bad = toy.site_names[2]
    told = []

    def poison(env, replies):
        if env.kind == "update_verdict":
            told.append(env.header)
        out = []
        for reply in replies:
            if reply.kind == "update" and reply.round == 0:
                vector = reply.vector.copy()
                vector[3] = np.nan
                header = {**reply.header}
                from fedcare.runtime.messages import vector_digest

                header["update_hash"] = vector_digest(vector)
                reply = Envelope(reply.kind, reply.run_id, 0, new_nonce(), header, vector)
            out.append(reply)
        return out

    net.sites[bad] = Wrapper(net.sites[bad], poison)
    connect_all(net)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert bad not in net.coordinator.history[0]["participants"]
    assert bad in net.coordinator.history[1]["participants"]
    rejected = [e for e in events(net) if e.kind == "update_rejected"]
    assert len(rejected) == 1 and rejected[0].site == bad
    assert f"site '{bad}'" in rejected[0].detail["reason"]
    assert "non-finite" in rejected[0].detail["reason"]
    assert told[0]["accepted"] is False and "non-finite" in told[0]["reason"]


def test_a_tampered_vector_that_no_longer_matches_its_hash_is_rejected(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=1), tmp_path)
    site = toy.site_names[0]

    def flip(env, replies):
        return [
            Envelope(r.kind, r.run_id, r.round, r.nonce, r.header, r.vector * 2)
            if r.kind == "update"
            else r
            for r in replies
        ]

    net.sites[site] = Wrapper(net.sites[site], flip)
    connect_all(net)
    net.run()
    reasons = [e.detail["reason"] for e in events(net) if e.kind == "update_rejected"]
    assert len(reasons) == 1 and "hashes to" in reasons[0]


def test_replayed_late_and_duplicate_updates_are_rejected_and_logged(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=2), tmp_path)
    site = toy.site_names[0]  # answers first, so the round is still open for its duplicate
    sent = []

    def record_and_send_round_1_twice(env, replies):
        out = []
        for r in replies:
            out.append(r)
            if r.kind == "update":
                sent.append(r)
                if r.round == 1:  # a buggy agent sends the same update again, fresh nonce
                    out.append(Envelope(r.kind, r.run_id, 1, new_nonce(), r.header, r.vector))
        return out

    net.sites[site] = Wrapper(net.sites[site], record_and_send_round_1_twice)
    connect_all(net)
    net.run(stop=lambda: len(net.coordinator.history) == 1)
    model_after_round_1 = net.coordinator.state.params.copy()
    original = sent[0]
    replay = net.coordinator.handle(original.from_peer(site), net.now)
    fresh_copy = Envelope(
        original.kind,
        original.run_id,
        original.round,
        new_nonce(),
        original.header,
        original.vector,
    )
    late = net.coordinator.handle(fresh_copy.from_peer(site), net.now)
    reasons = [e.detail["reason"] for e in events(net) if e.kind == "message_rejected"]
    assert reasons == ["replayed", "late"]
    assert all(o.envelope.header["accepted"] is False for o in replay + late)
    np.testing.assert_array_equal(net.coordinator.state.params, model_after_round_1)
    net.run()
    rejected = [e for e in events(net) if e.kind == "message_rejected"]
    assert [(e.site, e.detail["reason"]) for e in rejected] == [(site, "duplicate")]
    assert net.coordinator.history[1]["participants"].count(site) == 1


def test_a_round_with_too_few_valid_updates_is_retried_and_reaches_the_same_model(toy, tmp_path):
    plan = heart_plan(toy, "scaffold", rounds=2, participation=Participation(1.0, 4))
    reference = uninterrupted(toy, plan, tmp_path)
    net = deploy(toy, plan, tmp_path / "retry")
    bad = toy.site_names[0]
    spoiled = []

    def spoil_once(env, replies):
        out = []
        for r in replies:
            if r.kind == "update" and not spoiled:
                spoiled.append(r)
                header = {**r.header, "weight": -1.0}
                r = Envelope(r.kind, r.run_id, r.round, r.nonce, header, r.vector)
            out.append(r)
        return out

    net.sites[bad] = Wrapper(net.sites[bad], spoil_once)
    connect_all(net)
    net.run()
    kinds = [e.kind for e in events(net)]
    assert kinds.count("round_failed") == 1
    assert net.coordinator.phase is Phase.FINISHED
    # The site dropped its pending SCAFFOLD state and retrained the round from scratch.
    np.testing.assert_allclose(net.coordinator.final_params, reference, atol=1e-6)


def test_too_many_failed_attempts_fail_the_run_and_tell_the_sites(toy, tmp_path):
    options = CoordinatorOptions(max_attempts=2)
    plan = heart_plan(toy, "fedavg", rounds=1, participation=Participation(1.0, 4))
    net = deploy(toy, plan, tmp_path, options)
    bad = toy.site_names[0]

    def always_fail(env, replies):
        if env.kind == "train_request":
            return [
                Envelope.create(
                    "error_report",
                    env.run_id,
                    env.round,
                    {"code": "train_failed", "message": "GPU on fire"},
                )
            ]
        return replies

    net.sites[bad] = Wrapper(net.sites[bad], always_fail)
    connect_all(net)
    net.run()
    assert net.coordinator.phase is Phase.FAILED
    assert "fewer than 4 valid updates in 2 attempts" in net.coordinator.failure
    assert all(site.phase.value == "finished" for site in net.sites.values())


def test_the_run_waits_for_approval_and_lists_the_sites_that_wait(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", rounds=1)
    net = deploy(toy, plan, tmp_path, approve=False)
    connect_all(net)
    net.run()
    assert net.coordinator.phase is Phase.WAITING
    assert sorted(net.coordinator.waiting_for_approval()) == sorted(toy.site_names)
    for site in net.sites.values():
        site.approvals.approve(plan.hash, by="owner")
    net.tick(1.0)  # each site re-reads its approval store
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert net.coordinator.waiting_for_approval() == []


def approve(net: Loopback, plan, *names: str) -> None:
    """Owners approve; each site re-reads its approval store on its next tick."""
    for name in names:
        net.sites[name].approvals.approve(plan.hash, by=f"owner of {name}")


def test_round_one_waits_for_every_connected_owner_even_after_the_start_grace(toy, tmp_path):
    # Owners approve by hand, a while apart: the start grace (for absent sites) has long
    # passed when the first one approves, yet round 1 must still have every site.
    plan = heart_plan(toy, "fedavg", rounds=1)
    options = CoordinatorOptions(start_grace_s=10.0)
    net = deploy(toy, plan, tmp_path, options, approve=False)
    connect_all(net)
    net.run()
    net.tick(30.0)
    first, *others = toy.site_names
    approve(net, plan, first)
    net.tick(1.0)
    net.run()
    assert net.coordinator.phase is Phase.WAITING
    assert sorted(net.coordinator.waiting_for_approval()) == sorted(others)
    approve(net, plan, *others)
    net.tick(1.0)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    (record,) = net.coordinator.history
    assert record["participants"] == list(toy.site_names) and record["missing"] == {}
    assert not [e for e in events(net) if e.kind == "round_short"]


def test_after_the_approval_deadline_a_round_goes_on_without_the_site_and_says_it_ran_short(
    toy, tmp_path
):
    plan = heart_plan(toy, "fedavg", rounds=1)
    options = CoordinatorOptions(start_grace_s=10.0, approval_timeout_s=100.0)
    net = deploy(toy, plan, tmp_path, options, approve=False)
    slow = toy.site_names[3]
    approve(net, plan, *toy.site_names[:3])
    connect_all(net)
    net.run()
    net.tick(99.0)
    net.run()
    assert net.coordinator.phase is Phase.WAITING  # past the grace, within the deadline
    net.tick(2.0)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    (record,) = net.coordinator.history
    why = "waiting for its owner to approve the plan (the approval deadline of 100 s passed)"
    assert record["sampled"] == list(toy.site_names)
    assert record["missing"] == {slow: why}
    (short,) = [e for e in events(net) if e.kind == "round_short"]
    assert short.detail == {
        "round": 1,
        "sampled": list(toy.site_names),
        "contributed": list(toy.site_names[:3]),
        "missing": {slow: why},
    }


def test_a_site_whose_data_fails_is_out_of_the_run_until_it_returns_with_fixed_data(toy, tmp_path):
    options = CoordinatorOptions(start_grace_s=1000.0)  # no round may wait for it at all
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=4), tmp_path, options)
    broken = toy.site_names[2]
    fixed_check = net.sites[broken].data
    net.sites[broken].data = DataCheck(False, {}, ["column 'age' is missing"])
    acknowledged = []
    handle = net.sites[broken].handle
    net.sites[broken].handle = lambda env, now: acknowledged.append(env) or handle(env, now)
    connect_all(net)
    net.run(stop=lambda: bool(acknowledged))
    net.disconnect(broken)  # its agent stops once told
    net.run(stop=lambda: len(net.coordinator.history) == 2)
    # The site is told it takes no part (so its agent can stop instead of waiting).
    assert [(e.kind, e.header["code"]) for e in acknowledged] == [("error_report", "data_invalid")]
    why = (
        "data failed its check: column 'age' is missing; out until its agent restarts with "
        "fixed data"
    )
    assert [r["missing"] for r in net.coordinator.history] == [{broken: why}, {broken: why}]
    assert net.coordinator.sites[broken].why_not_ready() == why
    seen = events(net)
    problem = next(e for e in seen if e.kind == "data_problem")
    assert problem.detail == {"problems": ["column 'age' is missing"], "reason": why}
    gone = next(e for e in seen if e.kind == "site_disconnected")
    assert gone.detail == {"reason": "the connection closed", "out": why}

    # The hospital fixes its file and restarts its agent (round 3 is under way without it):
    # back from the next round on.
    net.sites[broken] = SiteMachine(
        broken, net.sites[broken].approvals, fixed_check, net.sites[broken].work_factory
    )
    net.connect(broken)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert [broken in r["participants"] for r in net.coordinator.history] == [
        False, False, False, True
    ]  # fmt: skip
    assert net.coordinator.history[-1]["missing"] == {}
    assert [e.site for e in events(net) if e.kind == "site_readmitted"] == [broken]


def test_a_site_whose_data_failed_stays_out_of_the_studys_next_run(toy, tmp_path):
    # A deployed study serves its runs one after another; the hospital whose file failed
    # in run 1 has not restarted its agent, so run 2 must not wait for it either.
    options = CoordinatorOptions(start_grace_s=1000.0)
    first = deploy(toy, heart_plan(toy, "fedavg", rounds=2), tmp_path / "one", options)
    broken = toy.site_names[2]
    first.sites[broken].data = DataCheck(False, {}, ["column 'age' is missing"])
    connect_all(first)
    first.run()
    assert first.coordinator.phase is Phase.FINISHED

    second = deploy(toy, heart_plan(toy, "fedavg", rounds=2, seed=8), tmp_path / "two", options)
    second.coordinator.carry_data_failures(first.coordinator.sites)
    carried = next(e for e in events(second) if e.kind == "data_problem")
    assert carried.site == broken and carried.detail["carried"] is True
    for name in toy.site_names:
        if name != broken:
            second.connect(name)
    second.run()  # no tick, no grace: nothing waits for the broken site
    assert second.coordinator.phase is Phase.FINISHED
    assert all(broken in r["missing"] for r in second.coordinator.history)


@pytest.mark.parametrize(("failing", "min_sites"), [(4, 1), (3, 2)])
def test_the_run_stops_naming_each_site_when_too_few_usable_sites_remain(
    toy, tmp_path, failing, min_sites
):
    plan = heart_plan(toy, "fedavg", rounds=2, participation=Participation(1.0, min_sites))
    net = deploy(toy, plan, tmp_path, CoordinatorOptions(start_grace_s=1000.0))
    broken = toy.site_names[:failing]
    for name in broken:
        net.sites[name].data = DataCheck(
            False, {}, [f"{name}.csv row 3, column 'age': not a number"]
        )
    told = []
    for name in toy.site_names[failing:]:
        handle = net.sites[name].handle
        net.sites[name].handle = lambda env, now, h=handle: told.append(env) or h(env, now)
    connect_all(net)
    net.run()  # no tick: it does not wait for anything
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FAILED and coordinator.round == 0
    needed = f"needs updates from at least {min_sites} site(s) (--min-sites)"
    usable = 4 - failing
    assert f"stopped before round 1: a round {needed}, but only {usable} of the 4" in (
        coordinator.failure
    )
    for name in broken:
        assert f"'{name}': data failed its check: {name}.csv row 3, column 'age'" in (
            coordinator.failure
        )
    (failed,) = [e for e in events(net) if e.kind == "run_failed"]
    assert sorted(failed.detail["sites"]) == sorted(broken)
    # A site with good data is told the run is over.
    assert len(told) >= 4 - failing
    assert all((e.kind, e.header["status"]) == ("run_finished", "failed") for e in told)


@pytest.mark.parametrize("crash_mid_round", [False, True])
def test_resume_from_checkpoint_reaches_the_uninterrupted_model(toy, tmp_path, crash_mid_round):
    plan = heart_plan(toy, "scaffold", rounds=4)
    reference = uninterrupted(toy, plan, tmp_path)
    net = deploy(toy, plan, tmp_path / "crash")
    connect_all(net)
    ckpt_dir = tmp_path / "checkpoint"

    def checkpoint_on_round_finished():
        for event in net.coordinator.drain_events():
            if event.kind == "round_finished":
                save_checkpoint(ckpt_dir, *_as_save_args(net.coordinator))
        if crash_mid_round:
            current = net.coordinator.current
            return current is not None and current.round == 2 and len(current.accepted) == 2
        return len(net.coordinator.history) == 2

    net.run(stop=checkpoint_on_round_finished)
    # kill -9: the coordinator's memory and queued messages are gone.
    ckpt = load_checkpoint(ckpt_dir)
    assert ckpt.state.round == 2
    net.coordinator = CoordinatorMachine.restore(plan, ckpt.state, ckpt.extra)
    net.queue.clear()
    assert [r["round"] for r in net.coordinator.history] == [1, 2]
    connect_all(net)  # the site agents reconnect with back-off
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    np.testing.assert_allclose(net.coordinator.final_params, reference, atol=1e-6)


def _as_save_args(coordinator: CoordinatorMachine):
    state, extra = coordinator.checkpoint()
    return state, {}, extra


def test_a_checkpoint_of_another_plan_is_refused(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", rounds=1)
    net = deploy(toy, plan, tmp_path)
    state, extra = net.coordinator.checkpoint()
    other = heart_plan(toy, "fedavg", rounds=2)
    with pytest.raises(ConfigError, match="was taken under plan"):
        CoordinatorMachine.restore(other, state, extra)


def test_messages_from_unknown_identities_are_ignored_and_logged(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg", rounds=1), tmp_path)
    out = net.coordinator.handle(
        Envelope.create("hello", "none", 0, {"data_ok": True}).from_peer("mallory"), 0.0
    )
    assert out == []
    assert events(net)[-1].detail["reason"] == "unknown_site"
