"""A site's privacy budget in a deployed run: refuse what cannot fit, charge before training.

Sites keep a persistent BudgetLedger per dataset (as ``fedcare site start
--budget-epsilon/--budget-delta`` opens it in the site's folder). The machines run through
the in-memory loopback of test_protocol_study.
"""

from __future__ import annotations

import pytest

from fedcare.privacy.budget import BudgetLedger, JobRef, PrivacyBudget
from fedcare.privacy.client_level import JobPrivacy, SiteBudget
from fedcare.privacy.sample_level import SiteSampleCost
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import Phase
from fedcare.runtime.messages import BUDGET_EXCEEDED, JobPlan, parse_message
from fedcare.runtime.rounds import StudyPlan
from fedcare.runtime.site import DataCheck, SiteMachine
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import Loopback, deploy, heart_plan

DP = {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}}
ROUNDS = 3


@pytest.fixture(scope="module")
def toy():
    return make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)


def dp_plan(toy, **kwargs):
    return heart_plan(toy, "fedavg", DP, rounds=ROUNDS, **kwargs)


def cost(plan) -> JobPrivacy:
    return JobPrivacy.of(plan.dp, plan.participation.fraction, plan.rounds)


def open_ledger(tmp_path, site: str, epsilon: float | None, delta: float = 1e-4) -> BudgetLedger:
    budget = None if epsilon is None else PrivacyBudget(epsilon, delta)
    (tmp_path / site).mkdir(parents=True, exist_ok=True)
    return BudgetLedger(tmp_path / site / "ledger.sqlite", site=site, dataset="toy", budget=budget)


def with_budget(net: Loopback, site: str, ledger: BudgetLedger) -> SiteMachine:
    """The site agent as `--budget-epsilon` starts it: same approvals, data and work."""
    old = net.sites[site]
    machine = SiteMachine(
        site,
        old.approvals,
        old.data,
        old.work_factory,
        coordinator="coordinator",
        budget=SiteBudget(ledger),
    )
    net.sites[site] = machine
    return machine


def run_to_end(net: Loopback) -> None:
    for name in net.sites:
        net.connect(name)
    finish(net)


def finish(net: Loopback) -> None:
    net.run()
    for _ in range(5):  # past the start grace, rounds go on without a refusing site
        if net.coordinator.done:
            break
        net.tick(120.0)
        net.run()
    assert net.coordinator.phase is Phase.FINISHED


def test_a_job_over_budget_is_refused_before_it_starts(toy, tmp_path):
    plan = dp_plan(toy)
    planned = cost(plan).planned_epsilon
    net = deploy(toy, plan, tmp_path, approve=False)
    site = toy.site_names[0]
    with_budget(net, site, open_ledger(tmp_path, site, epsilon=0.9 * planned))
    for name in toy.site_names[1:]:
        net.sites[name].approvals.approve(plan.hash, by="owner")
    run_to_end(net)
    # Refused before its owner was asked, nothing charged, reported to the coordinator.
    assert net.sites[site].approvals.pending() == {}
    assert net.sites[site].budget.ledger.job_spend() == {}
    refused = [e for e in net.coordinator.drain_events() if e.kind == "plan_refused"]
    assert [e.site for e in refused] == [site]
    assert "budget_exceeded" in refused[0].detail["reason"]
    assert net.coordinator.sites[site].why_not_ready().startswith("refused the plan")
    assert all(site not in r["participants"] for r in net.coordinator.history)
    site_events = {e.kind: e.detail for e in net.sites[site].drain_events()}
    assert f"plans to spend epsilon={planned:.6g}" in site_events["budget_refused"]["detail"]
    assert net.sites[site].phase.value == "finished"  # told the run ended; nothing trained


def test_a_site_with_a_budget_refuses_a_plan_without_dp(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", rounds=1)
    net = deploy(toy, plan, tmp_path)
    site = toy.site_names[2]
    with_budget(net, site, open_ledger(tmp_path, site, epsilon=100.0))
    run_to_end(net)
    assert "epsilon is unbounded" in net.coordinator.sites[site].refused
    assert all(site not in r["participants"] for r in net.coordinator.history)


def test_the_ledger_is_charged_round_by_round_and_persists_across_restarts(toy, tmp_path):
    plan = dp_plan(toy)
    job = cost(plan)
    net = deploy(toy, plan, tmp_path)
    site = toy.site_names[1]
    machine = with_budget(net, site, open_ledger(tmp_path, site, epsilon=10.0))
    run_to_end(net)
    charged = [e.detail["epsilon"] for e in machine.drain_events() if e.kind == "budget_charged"]
    assert charged == pytest.approx([job.epsilon_after(r) for r in (1, 2, 3)])
    # What the site charged is what the coordinator reports it released.
    assert charged[-1] == pytest.approx(net.coordinator.history[-1]["epsilon"])
    machine.budget.ledger.close()
    # The hospital restarts its agent: the same file, without repeating the budget flags.
    reopened = open_ledger(tmp_path, site, epsilon=None)
    assert reopened.budget == PrivacyBudget(10.0, 1e-4)
    assert reopened.job_spend() == {"run-1": pytest.approx((job.planned_epsilon, 1e-5))}
    assert reopened.remaining()[0] == pytest.approx(10.0 - job.planned_epsilon)


def test_two_jobs_on_one_dataset_compose_and_the_third_is_refused(toy, tmp_path):
    plan = dp_plan(toy)
    planned = cost(plan).planned_epsilon
    site = toy.site_names[3]
    for run in ("run-a", "run-b", "run-c"):
        net = deploy(toy, plan, tmp_path / run, run_id=run)  # same plan, same dataset
        with_budget(net, site, open_ledger(tmp_path, site, epsilon=2.5 * planned))
        run_to_end(net)
        took_part = any(site in r["participants"] for r in net.coordinator.history)
        assert took_part == (run != "run-c"), run
        net.sites[site].budget.ledger.close()
    ledger = open_ledger(tmp_path, site, epsilon=None)
    assert sorted(ledger.job_spend()) == ["run-a", "run-b"]
    assert ledger.spent() == pytest.approx((2 * planned, 2e-5))  # basic composition


def test_a_round_that_would_overrun_the_budget_is_not_trained(toy, tmp_path):
    plan = dp_plan(toy)
    job = cost(plan)
    net = deploy(toy, plan, tmp_path)
    site = toy.site_names[0]
    ledger = open_ledger(tmp_path, site, epsilon=job.planned_epsilon + 1.0)
    machine = with_budget(net, site, ledger)
    for name in net.sites:
        net.connect(name)
    net.run(stop=lambda: len(net.coordinator.history) == 1)
    # Meanwhile another job on the same dataset spends most of what is left.
    ledger.charge(JobRef("other-job", "f" * 64), 1.0 + job.planned_epsilon - 4.8, 1e-5)
    finish(net)
    participants = [r["participants"] for r in net.coordinator.history]
    assert site in participants[0] and all(site not in p for p in participants[1:])
    exhausted = [e for e in machine.drain_events() if e.kind == "budget_exhausted"]
    assert [e.detail["round"] for e in exhausted] == [1]
    assert ledger.job_spend()["run-1"][0] == pytest.approx(job.epsilon_after(1))
    assert ledger.spent()[0] <= ledger.budget.epsilon
    assert net.coordinator.sites[site].refused  # not asked again in this run


SAMPLE_DP = {"sample_dp": {"noise_multiplier": 1.2, "clip_norm": 1.0, "delta": 1e-5}}


def record_cost(plan, rows: int):
    return SiteSampleCost.of(plan.build_strategy().sample_dp, rows, plan.local_spec, plan.rounds)


def test_dp_sgd_alone_is_charged_at_each_sites_own_record_level_epsilon(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", SAMPLE_DP, rounds=ROUNDS)
    site = toy.site_names[0]
    rows = toy.sites[0].num_train
    planned = record_cost(plan, rows).planned_epsilon
    net = deploy(toy, plan, tmp_path)
    ledger = open_ledger(tmp_path, site, epsilon=2 * planned)
    with_budget(net, site, ledger)
    run_to_end(net)
    assert ledger.job_spend()[net.coordinator.run_id][0] == pytest.approx(planned)


def test_with_both_dp_kinds_a_record_pays_the_cheaper_guarantee_not_the_sum(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", {**DP, **SAMPLE_DP}, rounds=ROUNDS)
    site = toy.site_names[0]
    client = cost(plan).planned_epsilon
    sample = record_cost(plan, toy.sites[0].num_train).planned_epsilon
    net = deploy(toy, plan, tmp_path)
    ledger = open_ledger(tmp_path, site, epsilon=1.01 * min(client, sample))
    with_budget(net, site, ledger)
    run_to_end(net)
    assert ledger.job_spend()[net.coordinator.run_id][0] == pytest.approx(min(client, sample))


def test_dp_sgd_over_a_small_budget_is_refused_before_it_starts(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", SAMPLE_DP, rounds=ROUNDS)
    site = toy.site_names[0]
    planned = record_cost(plan, toy.sites[0].num_train).planned_epsilon
    net = deploy(toy, plan, tmp_path)
    machine = with_budget(net, site, open_ledger(tmp_path, site, epsilon=0.5 * planned))
    run_to_end(net)
    assert any(e.kind == "budget_refused" for e in machine.drain_events())
    assert site not in net.coordinator.history[0]["participants"]


def test_a_study_whose_runs_together_exceed_the_budget_is_refused_before_its_first_run(
    toy, tmp_path
):
    """Runs of a study add up like any jobs on the same data: the site counts this run and
    every run after it up front, rather than stopping the study halfway."""
    runs = (dp_plan(toy, seed=0), dp_plan(toy, seed=1))
    study = StudyPlan(runs[0].study, runs)
    planned = cost(runs[0]).planned_epsilon
    site = toy.site_names[0]
    approvals = ApprovalStore(tmp_path / site / "approvals.json")
    machine = SiteMachine(
        site,
        approvals,
        DataCheck(True, {"num_train": 40}),
        lambda plan: None,  # type: ignore[arg-type,return-value]  # never reached
        coordinator="coordinator",
        budget=SiteBudget(open_ledger(tmp_path, site, epsilon=1.5 * planned)),
    )
    machine.start(0.0)

    def offer(run_id: str, plan) -> object:
        message = JobPlan(run_id, 0, plan.to_dict(), plan.hash, study=study.to_dict(),
                          study_hash=study.hash)  # fmt: skip
        (reply,) = machine.handle(message.to_envelope().from_peer("coordinator"), 0.0)
        return parse_message(reply)

    refusal = offer("run-1", runs[0])
    assert refusal.code == BUDGET_EXCEEDED
    assert "this run and the 1 after it plan to spend" in refusal.message
    assert approvals.pending() == {}  # refused before its owner is asked
    waiting = offer("run-2", runs[1])  # the last run alone fits: its owner is asked
    assert waiting.KIND == "approval_status" and not waiting.approved
    assert list(approvals.pending()) == [study.hash]
