"""A misbehaving site against the real gRPC coordinator (mTLS, in one process).

Three honest site agents train the heart study; the fourth connection is a hand-driven
client holding a valid certificate that sends a malformed update (NaN) and then replays
it byte for byte. Both are refused with the reason recorded, the site is told, and the
round completes with the honest sites.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fedcare.cli.deploy import initial_model
from fedcare.core.records import TrainSpec
from fedcare.data.heart import load_heart_disease
from fedcare.net.channel import open_session
from fedcare.net.coordinator_server import Security, new_run, serve
from fedcare.net.site_agent import SiteAgent
from fedcare.net.site_training import site_training
from fedcare.net.store import RunStore
from fedcare.net.tls import REVOKED, TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import verify
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.messages import (
    ApprovalStatus,
    AuditCopy,
    Hello,
    JobPlan,
    TrainRequest,
    UpdateMessage,
    UpdateVerdict,
)
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.site import DataCheck, SiteMachine

ROGUE = "hungarian"


def test_malformed_and_replayed_updates_are_rejected_and_the_round_goes_on(
    tmp_path: Path,
) -> None:
    heart = load_heart_disease()
    ca = init_study_ca(tmp_path / "ca", "heart")
    bundles = {
        s: TlsBundle.load(issue_bundle(ca, s, tmp_path / s, "site")) for s in heart.site_names
    }
    coord_bundle = TlsBundle.load(
        issue_bundle(ca, "coordinator", tmp_path / "coordinator", "coordinator")
    )
    plan = RunPlan(
        sites=tuple(heart.site_names),
        strategy="fedavg",
        spec=TrainSpec(lr=0.02, epochs=1, batch_size=16),
        rounds=1,
        seed=0,
        input_shape=heart.input_shape,
        num_classes=heart.num_classes,
        study="heart",
    )
    folder = tmp_path / "study"
    driver = new_run(
        folder,
        "attack-run",
        plan,
        initial_model(plan),
        Security(coord_bundle, ca / REVOKED),
        CoordinatorOptions(round_timeout_s=60, start_grace_s=60),
        log=lambda _: None,
    )
    ports: list[int] = []
    ready = threading.Event()
    server = threading.Thread(
        target=serve,
        args=(driver, "127.0.0.1:0"),
        kwargs={"ready": lambda p: (ports.append(p), ready.set())},
        daemon=True,
    )
    server.start()
    assert ready.wait(30)
    target = f"127.0.0.1:{ports[0]}"

    agents = []
    for site in heart.sites:
        if site.name == ROGUE:
            continue
        approvals = ApprovalStore(tmp_path / "state" / site.name / "approvals.json")
        approvals.approve(plan.hash, by="owner")
        machine = SiteMachine(
            site.name, approvals, DataCheck(True), site_training(site), coordinator="coordinator"
        )
        agent = SiteAgent(
            machine,
            target,
            bundle=bundles[site.name],
            state_dir=tmp_path / "state" / site.name,
            log=lambda _: None,
        )
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        agents.append(thread)

    rogue = open_session(target, tls=bundles[ROGUE])
    # Its own copies of the signed audit entries arrive too; the rogue ignores them.
    replies = (env for env in rogue if env.kind != AuditCopy.KIND)
    rogue.send(Hello(True, {"num_train": 172}).to_envelope())
    job = JobPlan.from_envelope(next(replies))
    rogue.send(ApprovalStatus(job.run_id, 0, job.plan_hash, True).to_envelope())
    request = TrainRequest.from_envelope(next(replies))
    poisoned = np.full(request.params.size, np.nan, dtype=np.float32)
    update = UpdateMessage(request.run_id, request.round, request.attempt, poisoned, {}, 172.0, 172)
    envelope = update.to_envelope()
    rogue.send(envelope)
    first = UpdateVerdict.from_envelope(next(replies))
    rogue.send(envelope)  # the same bytes again: same nonce
    # The honest sites may finish the round meanwhile; its evaluation request can then
    # arrive before the verdict on the replay.
    second = UpdateVerdict.from_envelope(
        next(env for env in replies if env.kind == "update_verdict")
    )
    rogue.close()

    server.join(timeout=90)
    for thread in agents:
        thread.join(timeout=30)
    assert not server.is_alive()

    assert not first.accepted and "finite" in first.reason.lower()
    assert not second.accepted and "replayed" in second.reason
    with RunStore.in_folder(folder) as store:
        assert store.run("attack-run").status == "finished"
        (round0,) = store.rounds("attack-run")
        assert sorted(round0.by_status("contributed")) == sorted(
            s for s in heart.site_names if s != ROGUE
        )
        assert round0.by_status("rejected") == [ROGUE]
        replays = [e for e in store.events("attack-run", "message_rejected") if e.site == ROGUE]
        assert [e.detail["reason"] for e in replays] == ["replayed"]
    keys = {"coordinator": coord_bundle.signing_public_key()}
    assert verify(folder / "audit.log", keys).ok
    rejected = [e for e in driver.audit.entries() if e.kind == "update_rejected"]
    assert [e.body["site"] for e in rejected] == [ROGUE]
