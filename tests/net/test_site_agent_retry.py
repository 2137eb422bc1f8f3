"""A site agent stops retrying: after --give-up-after without the coordinator, at once for
a failure that cannot fix itself, and it reports a run that did not finish."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedcare.net.site_agent as site_agent
from fedcare.net.channel import TLS_FAILED, Backoff, TransportError
from fedcare.net.site_agent import GaveUpError, SiteAgent
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.messages import RunFinished
from fedcare.runtime.site import DataCheck, SiteMachine


class Clock:
    """Time that moves only when the agent reads it: each reading is ``step`` s later."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def agent(tmp_path: Path, lines: list[str], clock: Clock, give_up_s: float) -> SiteAgent:
    machine = SiteMachine(
        "va",
        ApprovalStore(tmp_path / "approvals.json"),
        DataCheck(True, {}, []),
        lambda plan: None,
        coordinator="coordinator",
    )
    return SiteAgent(
        machine,
        "127.0.0.1:50051",
        bundle=None,
        state_dir=tmp_path,
        log=lines.append,
        backoff=Backoff(initial_s=0.001, maximum_s=0.001, jitter=0.0),
        give_up_after_s=give_up_s,
        clock=clock,
    )


def test_an_agent_gives_up_after_the_bound_with_a_final_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []

    def unreachable(target: str, **_: object) -> None:
        attempts.append(target)
        raise TransportError(f"could not reach the coordinator at {target}", "UNAVAILABLE")

    monkeypatch.setattr(site_agent, "open_session", unreachable)
    lines: list[str] = []
    with pytest.raises(GaveUpError) as gave_up:
        agent(tmp_path, lines, Clock(step=400.0), give_up_s=1800.0).run()
    assert len(attempts) == 6  # retried while the outage lasted less than 30 min
    assert lines[0] == "retrying for up to 30 min without the coordinator (--give-up-after)"
    assert sum("retrying for up to" in line for line in lines) == 1  # said once per outage
    text = str(gave_up.value)
    assert text.startswith("gave up after 33 min without the coordinator at 127.0.0.1:50051")
    assert "the run did not finish at this site" in text and str(tmp_path) in text
    assert lines[-1] == f"STOPPED: {text}"


def test_a_tls_failure_that_cannot_fix_itself_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []

    def foreign(target: str, **_: object) -> None:
        attempts.append(target)
        raise TransportError("the coordinator's certificate is not from this site's CA", TLS_FAILED)

    monkeypatch.setattr(site_agent, "open_session", foreign)
    lines: list[str] = []
    with pytest.raises(TransportError):
        agent(tmp_path, lines, Clock(step=1.0), give_up_s=1800.0).run()
    assert len(attempts) == 1
    assert lines == [
        "STOPPED: not retrying, this cannot fix itself: the coordinator's certificate is not "
        "from this site's CA"
    ]


def test_the_agent_remembers_how_the_run_ended(tmp_path: Path) -> None:
    lines: list[str] = []
    site = agent(tmp_path, lines, Clock(step=1.0), give_up_s=60.0)
    site.machine.start(0.0)
    failed = RunFinished("r1", 2, "failed", detail="too few sites").to_envelope()
    site._send(site.machine.handle(failed.from_peer("coordinator"), 1.0))
    assert site.finished and site.run_status == "failed"  # the CLI exits non-zero on this
