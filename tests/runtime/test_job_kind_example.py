"""Add a job kind: a federated row count, declared and routed from this module alone.

The README's "Add a job kind" example. The ``count`` job declares its two messages in the
schema table and registers one handler on each machine's router; the real coordinator and
site machines then carry it beside a training run, with no edit to the router, the codec
or the machines, and with the machines' usual refusals for anything out of place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np
import pytest

from fedcare.runtime.codec import SCHEMAS, WireMessage
from fedcare.runtime.coordinator import COORDINATOR_ROUTES, CoordinatorMachine, Outgoing, Phase
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import ErrorReport, parse_message
from fedcare.runtime.router import ANY
from fedcare.runtime.site import SITE_ROUTES, SiteMachine, replay_checked
from fedcare.runtime.wire_fields import Integer, Text
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import Loopback, deploy, heart_plan

COUNT = "count"


@dataclass(frozen=True, eq=False)
class CountRequest(WireMessage):
    """Coordinator -> site: how many rows has your ``split`` ("train" or "test") table?"""

    KIND: ClassVar[str] = "count_request"
    run_id: str
    round: int
    split: Annotated[str, Text()]
    sender: str = ""


@dataclass(frozen=True, eq=False)
class CountResult(WireMessage):
    """Site -> coordinator: the row count; a count, never a record."""

    KIND: ClassVar[str] = "count_result"
    run_id: str
    round: int
    split: Annotated[str, Text()]
    rows: Annotated[int, Integer()]
    sender: str = ""


def answer_count(site: SiteMachine, env: Envelope, request: CountRequest) -> list[Envelope]:
    """The site's handler: the size of the table its data check summarised."""
    rows = int(site.data.summary[f"num_{request.split}"])
    return [CountResult(site.run_id, request.round, request.split, rows).to_envelope()]


class RowCount:
    """The coordinator's side: ask every ready site, sum the answers as they arrive."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.rows: dict[str, int] = {}

    def requests(self, coordinator: CoordinatorMachine) -> list[Outgoing]:
        request = CountRequest(coordinator.run_id, coordinator.round, self.split)
        return [Outgoing(site, request.to_envelope()) for site in coordinator.ready_sites()]

    def receive(
        self, coordinator: CoordinatorMachine, env: Envelope, result: CountResult
    ) -> list[Outgoing]:
        if result.split != self.split or env.sender in self.rows:
            problem = f"no {result.split} count was asked of '{env.sender}'"
            report = ErrorReport(coordinator.run_id, env.round, "unexpected", problem)
            return [Outgoing(env.sender, report.to_envelope())]
        self.rows[env.sender] = result.rows
        return []

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@pytest.fixture
def count_messages() -> Iterator[None]:
    """Declare the job kind's messages; withdrawn after the test."""
    SCHEMAS.declare(COUNT)(CountRequest)
    SCHEMAS.declare(COUNT)(CountResult)
    yield
    SCHEMAS.remove(CountResult.KIND)
    SCHEMAS.remove(CountRequest.KIND)


@pytest.fixture
def row_count(count_messages: None) -> Iterator[RowCount]:
    """Register the job kind's handlers on both machines' routers; withdrawn after."""
    job = RowCount("train")
    SITE_ROUTES.on(COUNT, "ready", CountRequest.KIND, replay_checked(answer_count))
    COORDINATOR_ROUTES.on(COUNT, ANY, CountResult.KIND, job.receive)
    yield job
    COORDINATOR_ROUTES.off(COUNT, ANY, CountResult.KIND)
    SITE_ROUTES.off(COUNT, "ready", CountRequest.KIND)


@pytest.fixture(scope="module")
def toy():
    return make_sites([40, 24, 12], num_features=4, test_rows=8, seed=3)


def report_of(env: Envelope) -> tuple[str, str]:
    report = parse_message(env)
    assert isinstance(report, ErrorReport)
    return report.code, report.message


def send_to_sites(net: Loopback, outgoing: list[Outgoing]) -> None:
    net.queue.extend(("site", o.recipient, o.envelope) for o in outgoing)


def test_a_row_count_runs_through_the_real_machines_beside_training(row_count, toy, tmp_path):
    plan = heart_plan(toy, "fedavg", rounds=2)
    reference = deploy(toy, plan, tmp_path / "reference")
    net = deploy(toy, plan, tmp_path / "counted")
    for each in (reference, net):
        for name in each.sites:
            each.connect(name)
    reference.run()
    net.run(stop=lambda: net.coordinator.phase is Phase.TRAINING)  # every site approved
    send_to_sites(net, row_count.requests(net.coordinator))
    net.run()
    assert row_count.rows == {s.name: s.num_train for s in toy.sites}
    assert row_count.total == 40 + 24 + 12
    # The training job went on untouched: the same model as a run without the count.
    assert net.coordinator.done
    np.testing.assert_array_equal(net.coordinator.final_params, reference.coordinator.final_params)


def test_a_count_out_of_place_gets_the_machines_usual_refusals(row_count, toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg"), tmp_path, approve=False)
    site = toy.site_names[0]
    net.connect(site)
    net.run()  # the plan reached the site; its owner has not approved it
    machine = net.sites[site]
    request = CountRequest(net.coordinator.run_id, 0, "train").to_envelope()
    [refusal] = machine.handle(request.from_peer("coordinator"), 0.0)
    assert report_of(refusal) == ("not_ready", "site is waiting_approval")
    # A site does not send count requests, nor a coordinator count results.
    [answer] = net.coordinator.handle(request.from_peer(site), 0.0)
    assert report_of(answer.envelope) == ("unexpected", "a site may not send 'count_request'")


def test_a_ready_site_counts_once_and_refuses_what_it_does_not_answer(row_count, toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg"), tmp_path)
    for name in net.sites:
        net.connect(name)
    net.run(stop=lambda: net.coordinator.phase is Phase.TRAINING)
    site = net.sites[toy.site_names[0]]
    request = CountRequest(net.coordinator.run_id, 0, "test").to_envelope().from_peer("coordinator")
    [answer] = site.handle(request, 0.0)
    result = parse_message(answer)
    assert isinstance(result, CountResult)
    assert (result.split, result.rows) == ("test", 8)
    assert site.handle(request, 0.0) == []  # a replay: dropped by the site's replay guard
    assert [e.kind for e in site.drain_events()][-1] == "message_rejected"
    result = CountResult(net.coordinator.run_id, 0, "train", 5).to_envelope()
    [refusal] = site.handle(result.from_peer("coordinator"), 0.0)
    assert report_of(refusal) == ("unexpected", "a coordinator may not send 'count_result'")


def test_without_its_declaration_a_count_is_an_unknown_kind(toy, tmp_path):
    net = deploy(toy, heart_plan(toy, "fedavg"), tmp_path)
    site = toy.site_names[0]
    net.connect(site)
    forged = Envelope.create("count_result", "run-1", 0, {"split": "train", "rows": 40})
    [answer] = net.coordinator.handle(forged.from_peer(site), 0.0)
    code, message = report_of(answer.envelope)
    assert code == "malformed"
    assert message.startswith("unknown message kind 'count_result'")


def test_a_handler_registered_for_one_phase_takes_its_message_only_then(
    count_messages, toy, tmp_path
):
    net = deploy(toy, heart_plan(toy, "fedavg"), tmp_path)
    site = toy.site_names[0]
    net.connect(site)
    net.run()  # one site of three: the coordinator keeps waiting
    job = RowCount("train")
    COORDINATOR_ROUTES.on(COUNT, Phase.EVALUATING.value, CountResult.KIND, job.receive)
    try:
        result = CountResult(net.coordinator.run_id, 0, "train", 40).to_envelope()
        [answer] = net.coordinator.handle(result.from_peer(site), 0.0)
    finally:
        COORDINATOR_ROUTES.off(COUNT, Phase.EVALUATING.value, CountResult.KIND)
    assert report_of(answer.envelope) == (
        "unexpected",
        "'count_result' is not expected while the coordinator is waiting",
    )
    assert job.rows == {}
