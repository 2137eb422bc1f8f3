"""The coordinator driver: what it logs, stores and reports when rounds run short, when a
site's data fails its check, and when too few usable sites remain.

The driver (run store, audit log, result files) and the site machines run in one process,
messages passed through in-memory links; tests/e2e/test_deploy.py does the same across
real processes over gRPC.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedcare.cli import deploy as deploy_cli
from fedcare.cli.deploy import initial_model, plan_and_facts
from fedcare.data.registry import load_dataset
from fedcare.net.coordinator_server import CoordinatorDriver, Security, new_run
from fedcare.net.site_training import site_training
from fedcare.net.store import RunStore
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import UpdateMessage, parse_message
from fedcare.runtime.site import DataCheck, SiteMachine
from fedcare.study.config import parse_config
from fedcare.study.deployed import write_deployed_study

HEART = {
    "name": "heart-driver",
    "dataset": {"name": "heart-disease"},
    "model": {"name": "logistic"},
    "seeds": [0],
    "rounds": 2,
    "local": {"optimizer": "sgd", "lr": 0.02, "batch_size": 16},
    "baselines": [],
    "strategies": [{"name": "fedavg"}],
}
SITES = ("cleveland", "hungarian", "switzerland", "va")


class QueueLink:
    """What the driver needs of a gRPC link: messages for one site go into a shared queue."""

    def __init__(self, identity: str, queue: deque[tuple[str, Envelope]]) -> None:
        self.identity, self.queue = identity, queue

    def send(self, env: Envelope) -> None:
        self.queue.append((self.identity, env))

    def close(self) -> None:
        pass


class Deployed:
    """One deployed heart run in this process: a driver, its sites, what it logged."""

    def __init__(
        self, folder: Path, options: CoordinatorOptions, broken: dict[str, list[str]]
    ) -> None:
        config = parse_config(HEART)
        plan, chosen, facts = plan_and_facts(config, None, None, None, None)
        about = {"config": config.model_dump(mode="json"), "label": chosen.display_name}
        self.folder = folder
        self.lines: list[str] = []
        self.driver: CoordinatorDriver = new_run(
            folder,
            "run-1",
            plan,
            initial_model(plan),
            Security(None),
            options,
            log=self.lines.append,
            study=about | {"dataset": facts},
        )
        self.queue: deque[tuple[str, Envelope]] = deque()
        self.links = {name: QueueLink(name, self.queue) for name in SITES}
        self.sites = {}
        for data in load_dataset("heart-disease").sites:
            approvals = ApprovalStore(folder.parent / "sites" / data.name / "approvals.json")
            approvals.approve(plan.hash, by="owner")
            problems = broken.get(data.name, [])
            check = DataCheck(not problems, {"num_train": data.num_train}, problems)
            self.sites[data.name] = SiteMachine(
                data.name, approvals, check, site_training(data), coordinator="coordinator"
            )

    def from_site(
        self, name: str, envs: list[Envelope], meddle: Callable[[str, Envelope], Any] | None
    ) -> None:
        for env in envs:
            env = meddle(name, env) if meddle else env
            if env is not None:
                self.driver.received(self.links[name], env.from_peer(name))

    def run(self, meddle: Callable[[str, Envelope], Any] | None = None) -> None:
        """Connect every site and pass messages until the run ends; deadlines pass on every
        idle tick (options with 0 s timeouts)."""
        for name, site in self.sites.items():
            self.driver.connected(self.links[name])
            self.from_site(name, site.start(time.monotonic()), meddle)
        for _ in range(10_000):
            if self.driver.finished.is_set():
                break
            if not self.queue:
                self.driver.tick()
                continue
            name, env = self.queue.popleft()
            replies = self.sites[name].handle(env.from_peer("coordinator"), time.monotonic())
            self.from_site(name, replies, meddle)
        self.driver.store.close()
        assert self.driver.finished.is_set(), "the run did not finish"


def lose_vas_first_update(site: str, env: Envelope) -> Envelope | None:
    message = parse_message(env)
    if site == "va" and isinstance(message, UpdateMessage) and message.round == 0:
        return None  # never arrives: va misses the round deadline
    return env


def status_text(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    deploy_cli._print_status(RunStore, folder, None)
    return capsys.readouterr().out


def test_a_round_that_runs_short_says_so_in_the_log_status_metrics_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = CoordinatorOptions(round_timeout_s=0.0, eval_timeout_s=30.0)
    run = Deployed(tmp_path / "study", options, broken={})
    run.run(meddle=lose_vas_first_update)

    missing = {"va": "missed the round deadline"}
    loud = [line for line in run.lines if line.startswith("WARNING: ")]
    assert loud == [
        "WARNING: round 1 ran short: 3 of 4 sampled site(s) contributed; missing 'va' "
        "(missed the round deadline)"
    ]
    expected = {
        "round": 1,
        "sampled": list(SITES),
        "contributed": ["cleveland", "hungarian", "switzerland"],
        "missing": missing,
    }
    with RunStore.in_folder(run.folder) as store:
        assert [r.short() for r in store.rounds("run-1")] == [expected, None]
    status = status_text(run.folder, capsys)
    assert "round 1 ran short: 3 of 4 sampled site(s) contributed; missing 'va'" in status
    assert "rounds short" in status

    write_deployed_study(run.folder)
    metrics = json.loads((run.folder / "metrics.json").read_text())
    (block,) = metrics["deployment"]["runs"]
    assert block["short_rounds"] == [expected]
    html = (run.folder / "report.html").read_text()
    assert "1 round(s) ran short" in html
    assert "round 1: 3 of 4 sampled sites contributed; missing va (missed the round deadline)" in (
        html
    )


def test_a_site_whose_data_failed_is_not_waited_for_and_status_says_why_after_it_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A start grace the test would never live through: the run must not wait for 'va'.
    options = CoordinatorOptions(start_grace_s=3600.0, eval_timeout_s=30.0)
    problem = "va.csv row 7, column 'age': expected a number, found 'sixty'"
    run = Deployed(tmp_path / "study", options, broken={"va": [problem]})
    va = run.links["va"]
    run.driver.connected(va)
    run.from_site("va", run.sites["va"].start(time.monotonic()), None)
    run.driver.disconnected(va, "the site closed the stream")  # its agent stops once told
    run.queue.clear()
    del run.sites["va"]
    started = time.monotonic()
    run.run()
    assert time.monotonic() - started < 60

    why = f"data failed its check: {problem}; out until its agent restarts with fixed data"
    with RunStore.in_folder(run.folder) as store:
        assert store.run("run-1").status == "finished"
        (va_status,) = [s for s in store.sites("run-1") if s.site == "va"]
        assert va_status.status == "data problem"
        assert va_status.detail == f"{why} (disconnected: the site closed the stream)"
        assert [r.missing() for r in store.rounds("run-1")] == [{"va": why}, {"va": why}]
        closed = store.events("run-1", "site_disconnected") + store.events("run-1", "stream_closed")
        assert closed and all(e.detail["reason"] for e in closed)
    status = status_text(run.folder, capsys)
    assert "data problem" in status and "column 'age'" in status
    assert any(
        line.startswith("site 'va' disconnected after reporting data problems (the site closed")
        for line in run.lines
    )


def test_the_run_stops_with_a_clear_message_when_every_site_fails_its_data_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = {name: [f"{name}.csv: no column 'target'"] for name in SITES}
    run = Deployed(tmp_path / "study", CoordinatorOptions(start_grace_s=3600.0), broken)
    run.run()

    with RunStore.in_folder(run.folder) as store:
        assert store.run("run-1").status == "failed"
        assert store.rounds("run-1") == []
    result = json.loads((run.folder / "deploy" / "run-1" / "result.json").read_text())
    assert result["status"] == "failed"
    failure = result["failure"]
    assert failure.startswith(
        "stopped before round 1: a round needs updates from at least 1 site(s) (--min-sites), "
        "but only 0 of the 4 site(s) sampled for it can take part"
    )
    for name in SITES:
        assert f"'{name}': data failed its check: {name}.csv: no column 'target'" in failure
    assert f"STOPPED: run run-1: {failure}" in run.lines
    assert f"run-1 failed: {failure}"[:60] in status_text(run.folder, capsys).replace("\n", " ")
