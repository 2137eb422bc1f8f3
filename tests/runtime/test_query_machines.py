"""The deployed query job's machines, coordinator and sites, over an in-memory link.

Every message goes through the one codec (encoded to an envelope, decoded and checked by
the receiving machine's router), stamped with the sender's identity as the transport does.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

import pytest

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.privacy.budget import BudgetLedger, PrivacyBudget
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import ErrorReport, JobPlan, parse_message
from fedcare.runtime.query_coordinator import QueryCoordinator, QueryPhase
from fedcare.runtime.query_messages import QueryQuestion
from fedcare.runtime.query_plan import AnalysisSpec, NoisePlan, QueryPlan
from fedcare.runtime.query_secure import read_layout
from fedcare.runtime.query_site_machine import QUESTION_REFUSED, QuerySiteMachine
from fedcare.stats.protocol import DisclosureRules
from fedcare.stats.site_tables import tcga_brca_site_tables
from fedcare.study.analysis_runner import run_query

SITES = ("northeast", "south", "west", "midwest")  # four of the six TCGA-BRCA regions


@pytest.fixture(scope="module")
def tables():
    every = tcga_brca_site_tables("all")
    return {name: every[name] for name in SITES}


def survival_plan() -> QueryPlan:
    return QueryPlan(
        name="brca",
        dataset="tcga-brca",
        sites=SITES,
        analyses=(
            AnalysisSpec("km", "km", {}),
            AnalysisSpec("cox", "cox", {"covariates": ["age_at_index", "race_white"]}),
        ),
        rules=DisclosureRules(min_cell=1),
    )


class Link:
    """A coordinator and its sites; ``run`` delivers messages until none is left."""

    def __init__(self, plan: QueryPlan, tables, tmp_path, approve: bool = True) -> None:
        self.plan = plan
        self.coordinator = QueryCoordinator(plan, "query-1")
        self.stores = {s: ApprovalStore(tmp_path / s / "approvals.json") for s in plan.sites}
        self.sites = {
            s: QuerySiteMachine(
                s, self.stores[s], lambda _split, s=s: tables[s], coordinator="coordinator"
            )
            for s in plan.sites
        }
        if approve:
            for store in self.stores.values():
                store.approve(plan.hash, by="Dr. Owner")
        self.queue: deque[tuple[str, str, Envelope]] = deque()
        self.events: list = []

    def connect(self, site: str) -> None:
        self.coordinator.site_connected(site)
        for env in self.sites[site].start():
            self.queue.append(("coordinator", site, env))

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        while self.queue and not stop():
            to, sender, env = self.queue.popleft()
            if to == "coordinator":
                for out in self.coordinator.handle(env.from_peer(sender)):
                    self.queue.append((out.recipient, "coordinator", out.envelope))
                self.events += self.coordinator.drain_events()
            else:
                for reply in self.sites[to].handle(env.from_peer(sender)):
                    self.queue.append(("coordinator", to, reply))


def test_a_deployed_km_and_cox_query_gives_exactly_the_simulators_numbers(tables, tmp_path):
    plan = survival_plan()
    link = Link(plan, tables, tmp_path)
    for site in SITES:
        link.connect(site)
    link.run()
    assert link.coordinator.phase is QueryPhase.FINISHED, link.coordinator.failure
    simulated = run_query(plan, tables)
    assert link.coordinator.run.results == simulated.run.results  # bit for bit
    assert all(m.phase.value == "finished" for m in link.sites.values())
    # One audit event per release: every site, every question, with what it released.
    releases = [e for e in link.events if e.kind == "query_release"]
    assert len(releases) == len(SITES) * link.coordinator.run.asked
    assert [e.detail["site"] for e in releases[:4]] == list(SITES)
    steps = [e for e in link.events if e.kind == "query_step"]
    assert len(steps) == link.coordinator.run.asked and all(e.memo for e in steps)


def test_nothing_is_asked_until_every_owner_approved_the_plans_hash(tables, tmp_path):
    plan = survival_plan()
    link = Link(plan, tables, tmp_path, approve=False)
    for site in SITES:
        link.connect(site)
    link.run()
    assert link.coordinator.phase is QueryPhase.WAITING
    assert not [e for e in link.events if e.kind == "query_question"]
    assert set(link.stores["south"].pending()) == {plan.hash}  # shown to the owner in full
    for site in SITES:
        link.stores[site].approve(plan.hash, by="Dr. Owner")
        link.queue.extend(("coordinator", site, env) for env in link.sites[site].tick())
    link.run()
    assert link.coordinator.phase is QueryPhase.FINISHED


def test_a_coordinator_restored_from_a_step_checkpoint_ends_as_an_uninterrupted_one(
    tables, tmp_path
):
    plan = survival_plan()
    whole = Link(plan, tables, tmp_path / "whole")
    for site in SITES:
        whole.connect(site)
    whole.run()
    cut = Link(plan, tables, tmp_path / "cut")
    for site in SITES:
        cut.connect(site)
    cut.run(stop=lambda: sum(e.kind == "query_step" for e in cut.events) == 3)
    memo = json.loads(json.dumps([e for e in cut.events if e.kind == "query_step"][-1].memo))
    # The coordinator dies; a new one starts from the checkpoint, the sites reconnect.
    cut.coordinator = QueryCoordinator.restore(plan, "query-1", memo)
    cut.queue.clear()
    for site in SITES:
        cut.connect(site)
    cut.run()
    assert cut.coordinator.phase is QueryPhase.FINISHED
    assert cut.coordinator.run.results == whole.coordinator.run.results


def test_a_site_refuses_a_question_its_approved_plan_does_not_ask_and_the_query_stops(
    tables, tmp_path
):
    plan = survival_plan()
    link = Link(plan, tables, tmp_path)
    for site in SITES:
        link.connect(site)
    link.run(stop=lambda: link.coordinator.phase is QueryPhase.ASKING)
    machine = link.sites["west"]
    forged = QueryQuestion("query-1", 7, "cox", "cox.moments", {"covariates": ["T"]}, "sum")
    [refusal] = machine.handle(forged.to_envelope().from_peer("coordinator"))
    report = parse_message(refusal)
    assert isinstance(report, ErrorReport) and report.code == QUESTION_REFUSED
    assert "is not one the approved plan" in report.message
    for out in link.coordinator.handle(refusal.from_peer("west")):
        assert out.envelope.kind == "run_finished"
    assert link.coordinator.phase is QueryPhase.FAILED
    assert link.coordinator.failure.startswith("site west: question_refused")


def test_a_plan_altered_on_the_way_is_refused_before_the_owner_is_asked(tables, tmp_path):
    plan = survival_plan()
    link = Link(plan, tables, tmp_path, approve=False)
    link.connect("south")
    [(_, _, hello)] = list(link.queue)
    [out] = link.coordinator.handle(hello.from_peer("south"))
    altered = parse_message(out.envelope)
    altered.plan["disclosure"]["min_cell"] = 0  # the hash no longer matches
    [refusal] = link.sites["south"].handle(altered.to_envelope().from_peer("coordinator"))
    report = parse_message(refusal)
    assert isinstance(report, ErrorReport) and report.code == "plan_refused"
    assert "hashes to" in report.message
    assert link.stores["south"].pending() == {}


def noised_plan(*columns: str) -> QueryPlan:
    crosstabs = tuple(
        AnalysisSpec(f"ct-{c}", "crosstab", {"row": c, "row_levels": ["0", "1"]}) for c in columns
    )
    return QueryPlan(
        name="noised",
        dataset="tcga-brca",
        sites=SITES,
        analyses=crosstabs,
        noise=NoisePlan("laplace", 1.0),
    )


def with_ledgers(link: Link, tmp_path, epsilon: float) -> None:
    for name, machine in link.sites.items():
        machine.ledger = BudgetLedger(
            tmp_path / name / "budget.sqlite",
            site=name,
            dataset="tcga-brca",
            budget=PrivacyBudget(epsilon, 0.0),
        )


def test_deployed_noise_is_charged_to_each_sites_own_ledger_before_the_release_leaves(
    tables, tmp_path
):
    plan = noised_plan("race_white", "prior_malignancy_yes")
    link = Link(plan, tables, tmp_path)
    with_ledgers(link, tmp_path, epsilon=1.5)  # room for one noised answer, not two
    for site in SITES:
        link.connect(site)
    link.run()
    assert link.coordinator.phase is QueryPhase.FAILED
    assert link.coordinator.failure.startswith("site northeast: budget_exceeded")
    first = [r for r in link.coordinator.records if r.index == 0]
    assert len(first) == len(SITES) and all(r.noise for r in first)
    for machine in link.sites.values():
        assert machine.ledger is not None
        assert machine.ledger.spent() == pytest.approx((1.0, 0.0))  # the refused one: nothing


def test_a_site_without_a_ledger_refuses_a_noised_plan_and_a_ckks_sum_is_not_deployed(
    tables, tmp_path
):
    link = Link(noised_plan("race_white"), tables, tmp_path, approve=False)
    link.connect("west")
    [(_, _, hello)] = list(link.queue)
    [out] = link.coordinator.handle(hello.from_peer("west"))
    [refusal] = link.sites["west"].handle(out.envelope.from_peer("coordinator"))
    report = parse_message(refusal)
    assert isinstance(report, ErrorReport) and report.code == "plan_refused"
    assert "keeps no ledger" in report.message
    secure = QueryPlan(**{**survival_plan().__dict__, "secure": "ckks"})
    with pytest.raises(ConfigError, match="'secure: ckks' runs in the simulator only"):
        QueryCoordinator(secure, "q")


def test_a_site_whose_rows_were_checked_against_another_schema_refuses_the_plan(tables, tmp_path):
    plan = QueryPlan(**{**survival_plan().__dict__, "dataset_params": {"schema_sha256": "ab" * 32}})
    store = ApprovalStore(tmp_path / "approvals.json")
    machine = QuerySiteMachine(
        "south", store, lambda _split: tables["south"], schema_sha256="cd" * 32
    )
    offer = JobPlan("q", 0, plan.to_dict(), plan.hash).to_envelope().from_peer("coordinator")
    [refusal] = machine.handle(offer)
    report = parse_message(refusal)
    assert isinstance(report, ErrorReport) and report.code == "plan_refused"
    assert f"the plan's schema has SHA-256 {'ab' * 32}" in report.message
    assert store.pending() == {}  # the owner is never asked about a plan it cannot run


def test_a_deployed_secagg_query_sums_through_real_secagg_and_equals_the_simulators(
    tables, tmp_path
):
    plan = QueryPlan(**{**survival_plan().__dict__, "secure": "secagg"})
    link = Link(plan, tables, tmp_path)
    for site in SITES:
        link.connect(site)
    link.run()
    assert link.coordinator.phase is QueryPhase.FINISHED, link.coordinator.failure
    simulated = run_query(plan, tables)
    assert link.coordinator.run.results == simulated.run.results  # bit for bit
    # The coordinator never held a site's values for a sum: each release it logged is
    # masked (a layout, no digest); per_site questions (Cox's event times) are in the clear.
    releases = [e for e in link.events if e.kind == "query_release"]
    masked = [e for e in releases if e.detail.get("secure") == "secagg"]
    assert masked and all("values_sha256" not in e.detail for e in masked)
    assert all("values_sha256" in e.detail for e in releases if e not in masked)
    assert {e.detail["site"] for e in masked} == set(SITES)


def test_a_site_refuses_to_answer_in_the_clear_a_sum_its_plan_sums_securely(tables, tmp_path):
    plan = QueryPlan(**{**survival_plan().__dict__, "secure": "secagg"})
    link = Link(plan, tables, tmp_path)
    for site in SITES:
        link.connect(site)

    def a_sum_is_asked() -> bool:
        return any(
            env.kind == "query_question" and parse_message(env).combine == "sum"
            for _, _, env in link.queue
        )

    link.run(stop=a_sum_is_asked)
    to, sender, asked = next(q for q in link.queue if q[2].kind == "query_question")
    question = parse_message(asked)
    assert isinstance(question, QueryQuestion) and question.session  # a SecAgg session
    clear = QueryQuestion(**{**question.__dict__, "session": ""})  # as a rogue coordinator
    [refusal] = link.sites[to].handle(clear.to_envelope().from_peer(sender))
    report = parse_message(refusal)
    assert isinstance(report, ErrorReport) and report.code == QUESTION_REFUSED
    assert "sums it securely" in report.message


def test_a_site_lost_mid_secure_sum_gets_the_question_again_in_a_new_session(tables, tmp_path):
    plan = QueryPlan(**{**survival_plan().__dict__, "secure": "secagg"})
    link = Link(plan, tables, tmp_path)
    for site in SITES:
        link.connect(site)
    link.run(stop=lambda: any(env.kind == "secagg" for _, _, env in link.queue))
    first = link.coordinator.secure
    assert first is not None
    link.coordinator.site_disconnected("west")  # its keys never reach the coordinator
    link.queue = deque(q for q in link.queue if "west" not in q[:2])
    link.connect("west")
    link.run()
    assert link.coordinator.phase is QueryPhase.FINISHED, link.coordinator.failure
    assert link.coordinator.run.results == run_query(plan, tables).run.results
    stale = [e for e in link.events if e.kind == "query_release" and e.detail.get("secure")]
    assert len({e.round for e in stale}) < len(stale)  # the interrupted question, twice


def test_a_secure_sum_message_without_a_valid_layout_is_refused_naming_the_site():
    env = Envelope.create("secagg", "q", 0, header={"layout": [["n", [2, -1]]]})
    with pytest.raises(ProtocolError, match="site 'south' announced no valid 'layout'"):
        read_layout(env, "south")
    assert read_layout(Envelope.create("secagg", "q", 0, header={"layout": [["n", [2]]]}), "s")
