"""SiteMachine: the owner's approval gates every run, the plan is the only source of
hyper-parameters, and per-site algorithm state commits only once its update counted.

Local work is a small numpy stand-in, so these tests check the protocol, not the training.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalOutcome, TrainSpec
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    EvalRequest,
    JobPlan,
    RunFinished,
    TrainRequest,
    parse_message,
)
from fedcare.runtime.rounds import RunPlan, StudyPlan
from fedcare.runtime.site import DataCheck, SiteMachine, SitePhase, TrainTask

P = 6
SITES = ("north", "south")
CONTROL = "scaffold/control"


class FakeWork:
    """Moves the model by a fixed step and records what it was asked to do."""

    num_params = P

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.tasks: list[TrainTask] = []

    def train(self, task: TrainTask) -> LocalOutcome:
        self.tasks.append(task)
        return LocalOutcome(task.start - 0.3, num_samples=10, num_steps=2, train_loss=0.5)

    def evaluate(self, params):
        return EvalStats.from_predictions(np.array([0.2, 0.8]), np.array([0, 1]), np.ones(2), 2)

    def local_mask(self, kind):
        return np.arange(P) >= P // 2


def plan(strategy="scaffold", **kwargs) -> RunPlan:
    return RunPlan(
        sites=SITES,
        strategy=strategy,
        spec=TrainSpec(lr=0.1, batch_size=4),
        rounds=3,
        seed=7,
        input_shape=(5,),
        num_classes=2,
        **kwargs,
    )


def as_coordinator(message) -> Envelope:
    return message.to_envelope().from_peer("coordinator")


def job(p: RunPlan) -> Envelope:
    return as_coordinator(JobPlan("run-1", 0, p.to_dict(), p.hash))


def train(p: RunPlan, round=0, contributed=-1, **overrides) -> Envelope:
    fields = {
        "run_id": "run-1",
        "round": round,
        "plan_hash": p.hash,
        "params": np.zeros(P, dtype=np.float32),
        "arrays": {CONTROL: np.full(P, 0.5, dtype=np.float32)},
        "seed": p.seed,
        "site_index": 0,
        "sampled": list(SITES),
        "contributed": contributed,
    }
    fields.update(overrides)
    return as_coordinator(TrainRequest(**fields))


@pytest.fixture
def store(tmp_path):
    return ApprovalStore(tmp_path / "approvals.json")


def machine(store, ok=True, problems=()) -> tuple[SiteMachine, list[FakeWork]]:
    built: list[FakeWork] = []

    def factory(p: RunPlan) -> FakeWork:
        built.append(FakeWork(p))
        return built[-1]

    check = DataCheck(ok, {"num_train": 10}, list(problems))
    site = SiteMachine("north", store, check, factory, coordinator="coordinator")
    site.start(0.0)
    return site, built


def reply(site: SiteMachine, env: Envelope, now: float = 0.0):
    return [parse_message(e) for e in site.handle(env, now)]


def approved_site(store, p=None):
    p = p or plan()
    store.approve(p.hash, by="owner")
    site, built = machine(store)
    assert reply(site, job(p))[0].approved
    return site, built, p


def test_an_unapproved_plan_waits_for_its_owner_and_nothing_trains(store):
    site, built = machine(store)
    p = plan()
    (status,) = reply(site, job(p))
    assert status.approved is False
    assert f"fedcare site approve {p.hash}" in status.detail
    assert site.phase is SitePhase.WAITING_APPROVAL
    assert p.hash in store.pending()  # the owner can review the plan
    (refusal,) = reply(site, train(p))
    assert refusal.code == "not_ready" and built == []
    assert site.tick(1.0) == []  # still waiting
    store.approve(p.hash, by="dr. owner")
    (now_approved,) = [parse_message(e) for e in site.tick(2.0)]
    assert now_approved.approved and "dr. owner" in now_approved.detail
    assert site.phase is SitePhase.READY
    assert reply(site, train(p))[0].KIND == "update"


def test_an_allow_rule_approves_matching_plans_without_asking(store):
    store.allow("strategy.name=scaf*", by="owner")
    site, _ = machine(store)
    assert reply(site, job(plan()))[0].approved
    other = plan("fedavg")
    assert reply(site, job(other))[0].approved is False


def test_a_site_with_invalid_data_says_so_and_refuses_every_plan(store):
    site = SiteMachine("north", store, DataCheck(False, {}, ["column 'age' is missing"]), FakeWork)
    (hello,) = [parse_message(e) for e in site.start(0.0)]
    assert hello.data_ok is False and hello.problems == ["column 'age' is missing"]
    (refusal,) = reply(site, job(plan()))
    assert refusal.code == "data_invalid" and "age" in refusal.message
    assert site.phase is SitePhase.REFUSED


def test_a_plan_whose_hash_does_not_match_is_refused(store):
    site, _ = machine(store)
    p = plan()
    forged = as_coordinator(JobPlan("run-1", 0, {**p.to_dict(), "rounds": 99}, p.hash))
    (refusal,) = reply(site, forged)
    assert refusal.code == "plan_refused" and "hashes to" in refusal.message


def test_a_plan_that_does_not_name_this_site_is_refused(store):
    site, _ = machine(store)
    p = RunPlan(
        sites=("east", "west"),
        strategy="fedavg",
        spec=TrainSpec(),
        rounds=1,
        seed=0,
        input_shape=(5,),
        num_classes=2,
    )
    (refusal,) = reply(site, job(p))
    assert refusal.code == "plan_refused" and "'north' is not part of this plan" in refusal.message


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"seed": 8}, "seed 8"),
        ({"plan_hash": "0" * 64}, "approved plan is"),
        ({"round": 3}, "beyond the plan's 3 rounds"),
        ({"params": np.zeros(P + 1, dtype=np.float32)}, "7 values"),
    ],
)
def test_a_train_request_that_strays_from_the_approved_plan_is_refused(store, override, problem):
    site, built, p = approved_site(store)
    (refusal,) = reply(site, train(p, **override))
    assert refusal.code == "train_refused" and problem in refusal.message
    assert built[0].tasks == []


def test_messages_from_anyone_but_the_coordinator_are_refused(store):
    site, built, p = approved_site(store)
    env = TrainRequest(
        "run-1", 0, p.hash, np.zeros(P, np.float32), {}, p.seed, 0, list(SITES)
    ).to_envelope()
    (refusal,) = reply(site, env.from_peer("south"))
    assert refusal.code == "unknown_sender" and built[0].tasks == []


def test_a_replayed_train_request_is_ignored_and_logged(store):
    site, built, p = approved_site(store)
    request = train(p)
    reply(site, request)
    assert reply(site, request) == []
    assert len(built[0].tasks) == 1
    rejected = [e for e in site.drain_events() if e.kind == "message_rejected"]
    assert rejected[0].detail["reason"] == "replayed"


def test_scaffold_state_commits_only_when_the_coordinator_counts_the_update(store):
    site, built, p = approved_site(store)
    reply(site, train(p, round=0))
    assert site.state == {} and site.pending is not None  # new control variate is pending
    # Round 0's update was dropped (contributed -1): round 1 starts from the old state.
    reply(site, train(p, round=1, contributed=-1))
    first_correction = built[0].tasks[-1].objective.correction
    np.testing.assert_allclose(first_correction, 0.5)  # c - c_i with c_i = 0
    # Round 1's update counted: round 2 trains with the committed control variate.
    reply(site, train(p, round=2, contributed=1))
    assert site.committed_round == 1 and CONTROL in site.state
    # c_i = 0 - 0.5 + 0.3 / (2 steps * lr 0.1) = 1, so the correction c - c_i is -0.5
    np.testing.assert_allclose(built[0].tasks[-1].objective.correction, -0.5)
    (refusal,) = reply(site, train(p, round=1, contributed=1))
    # Said with its own code: the coordinator stops the run rather than train without it.
    assert refusal.code == "already_counted" and "late" in refusal.message


def test_a_restarted_site_restores_its_state_and_trains_as_if_it_never_stopped(store, tmp_path):
    site, built, p = approved_site(store)
    reply(site, train(p, round=0))
    arrays, meta = site.checkpoint()
    reply(site, train(p, round=1, contributed=0))
    uninterrupted = built[0].tasks[-1].objective.correction

    restarted, rebuilt = machine(store)
    restarted.restore(arrays, meta)
    assert reply(restarted, job(p))[0].approved
    reply(restarted, train(p, round=1, contributed=0))
    np.testing.assert_array_equal(rebuilt[0].tasks[-1].objective.correction, uninterrupted)


def test_evaluation_returns_counts_and_the_personal_model_at_the_end(store):
    p = plan("fedper", strategy_params={"finetune_epochs": 2})
    site, built, p = approved_site(store, p)
    (update,) = reply(site, train(p, round=0, arrays={}))
    assert np.all(update.delta[P // 2 :] == 0)  # the personal head is never uploaded
    final = as_coordinator(
        EvalRequest("run-1", 3, np.zeros(P, np.float32), final=True, contributed=0)
    )
    (result,) = reply(site, final)
    assert set(result.stats) == {"global", "personal"}
    finetune = built[0].tasks[-1]
    assert (finetune.purpose, finetune.round, finetune.spec.epochs) == ("misc", 3, 2)
    # The personal model starts from the site's own head, kept locally.
    np.testing.assert_allclose(finetune.start[P // 2 :], -0.3)
    np.testing.assert_allclose(finetune.start[: P // 2], 0.0)


def test_run_finished_settles_the_state_and_ends_the_run(store):
    site, _, p = approved_site(store)
    reply(site, train(p, round=2))
    reply(site, as_coordinator(RunFinished("run-1", 3, "finished", "ab" * 32, contributed=2)))
    assert site.phase is SitePhase.FINISHED and site.committed_round == 2
    assert [e.kind for e in site.drain_events()][-1] == "run_finished"


def test_a_new_run_starts_from_fresh_algorithm_state(store):
    site, _, p = approved_site(store)
    reply(site, train(p, round=0))
    reply(site, train(p, round=1, contributed=0))
    assert site.state
    next_run = as_coordinator(JobPlan("run-2", 0, p.to_dict(), p.hash))
    assert reply(site, next_run)[0].approved
    assert site.state == {} and site.run_id == "run-2"


def test_a_site_still_waiting_for_approval_hears_that_the_run_ended(store):
    site, _ = machine(store)
    p = plan()
    reply(site, job(p))
    assert site.phase is SitePhase.WAITING_APPROVAL
    reply(site, as_coordinator(RunFinished("run-1", 3, "finished", "ab" * 32)))
    assert site.phase is SitePhase.FINISHED


def study_of(*runs: RunPlan) -> StudyPlan:
    return StudyPlan("study", tuple(runs))


def study_job(p: RunPlan, study: StudyPlan, run_id: str = "run-1", **overrides) -> Envelope:
    fields = {"study": study.to_dict(), "study_hash": study.hash, **overrides}
    return as_coordinator(JobPlan(run_id, 0, p.to_dict(), p.hash, **fields))


def test_one_approval_of_a_study_lets_each_of_its_runs_run(store):
    first, second = plan(), replace(plan(), seed=8)
    study = study_of(first, second)
    site, _ = machine(store)
    (status,) = reply(site, study_job(first, study))
    assert not status.approved and f"fedcare site approve {study.hash}" in status.detail
    assert list(store.pending()) == [study.hash]
    store.approve(study.hash, by="dr. owner")
    (approved,) = [parse_message(e) for e in site.tick(1.0)]
    assert approved.approved and approved.plan_hash == first.hash
    reply(site, as_coordinator(RunFinished("run-1", 3, "finished", "ab" * 32)))
    assert site.phase is SitePhase.WAITING_PLAN  # another run of the study follows
    assert reply(site, study_job(second, study, "run-2"))[0].approved
    reply(site, as_coordinator(RunFinished("run-2", 3, "finished", "ab" * 32)))
    assert site.phase is SitePhase.FINISHED  # that was the study's last run


def test_a_run_plan_that_is_not_in_the_approved_study_is_refused(store):
    study = study_of(plan(), replace(plan(), seed=8))
    store.approve(study.hash, by="owner")
    site, built = machine(store)
    outsider = replace(plan(), seed=9)  # the coordinator says it belongs to the study; it does not
    (refusal,) = reply(site, study_job(outsider, study))
    assert refusal.code == "plan_refused"
    assert f"job plan {outsider.hash} is not one of the 2 runs" in refusal.message
    assert site.phase is SitePhase.WAITING_PLAN and built == []


def test_a_study_plan_that_does_not_match_its_hash_is_refused(store):
    study = study_of(plan(), replace(plan(), seed=8))
    store.approve(study.hash, by="owner")
    site, _ = machine(store)
    other = study_of(plan(), replace(plan(), seed=8), replace(plan(), seed=9))
    (refusal,) = reply(site, study_job(plan(), other, study_hash=study.hash))
    assert refusal.code == "plan_refused" and "hashes to" in refusal.message


def test_a_failed_run_ends_the_study_at_the_site(store):
    study = study_of(plan(), replace(plan(), seed=8))
    store.approve(study.hash, by="owner")
    site, _ = machine(store)
    assert reply(site, study_job(plan(), study))[0].approved
    reply(site, as_coordinator(RunFinished("run-1", 1, "failed", "")))
    assert site.phase is SitePhase.FINISHED


def test_a_site_that_never_got_a_plan_stops_when_the_coordinator_stops_the_run(store):
    # e.g. every other hospital failed its data check: the run fails before this site's
    # plan went out; the site must not keep reconnecting to a run that is over.
    site, built = machine(store)
    assert reply(site, as_coordinator(RunFinished("run-1", 0, "failed", ""))) == []
    assert site.phase is SitePhase.FINISHED and not built


def test_a_site_without_a_plan_keeps_waiting_when_a_run_finished_normally(store):
    site, _ = machine(store)
    reply(site, as_coordinator(RunFinished("run-1", 3, "finished", "ab" * 32)))
    assert site.phase is SitePhase.WAITING_PLAN
