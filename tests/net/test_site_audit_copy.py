"""A site keeps the coordinator's audit entries: the coordinator's certificate is checked
against the study CA once (not once per entry), and checked again once it has expired."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fedcare.data.registry import load_dataset
from fedcare.net import site_agent, tls
from fedcare.net.coordinator_server import Security
from fedcare.net.site_agent import SiteAgent
from fedcare.net.site_training import site_training
from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import AuditLog
from fedcare.runtime.messages import AuditCopy
from fedcare.runtime.site import DataCheck, SiteMachine


def _agent(tmp_path: Path) -> tuple[SiteAgent, TlsBundle, list[str]]:
    ca = init_study_ca(tmp_path / "ca", "heart")
    issue_bundle(ca, "coordinator", tmp_path / "coordinator", "coordinator")
    issue_bundle(ca, "va", tmp_path / "va", "site")
    data = load_dataset("heart-disease").sites[3]
    state = tmp_path / "state"
    check = DataCheck(True, {"num_train": data.num_train}, [])
    machine = SiteMachine(
        "va", ApprovalStore(state / "approvals.json"), check, site_training(data), coordinator="c"
    )
    lines: list[str] = []
    bundle = TlsBundle.load(tmp_path / "va")
    agent = SiteAgent(machine, "127.0.0.1:1", bundle=bundle, state_dir=state, log=lines.append)
    return agent, TlsBundle.load(tmp_path / "coordinator"), lines


def test_a_site_checks_the_coordinators_certificate_once_then_again_when_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, coordinator, lines = _agent(tmp_path)
    log = AuditLog(tmp_path / "audit.log")
    key = Security(coordinator).signing_key()
    checked: list[bytes] = []
    real_check = site_agent.check_peer_certificate
    monkeypatch.setattr(
        site_agent,
        "check_peer_certificate",
        lambda pem, *a, **k: (checked.append(pem), real_check(pem, *a, **k))[1],
    )
    certificate = coordinator.cert_pem.decode("ascii")
    for round_ in range(3):
        entry = log.append("round_started", "coordinator", {"sites": ["va"]}, key)
        agent._keep_audit_entry(
            AuditCopy("run", round_, entry.to_dict(), certificate).to_envelope()
        )
    assert len(agent.audit_copy.entries()) == 3
    assert len(checked) == 1  # one certificate, checked once

    expired = tls.valid_until(coordinator.cert_pem) + dt.timedelta(days=1)
    monkeypatch.setattr(tls, "_now", lambda: expired)
    entry = log.append("round_completed", "coordinator", {"sites": ["va"]}, key)
    agent._keep_audit_entry(AuditCopy("run", 3, entry.to_dict(), certificate).to_envelope())
    assert len(checked) == 2
    assert len(agent.audit_copy.entries()) == 3  # not kept
    assert lines[-1].startswith("audit entry NOT kept: certificate") and "is not valid" in lines[-1]
