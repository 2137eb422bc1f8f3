"""Secure aggregation between the deployed machines: the coordinator sees only the sum.

The machines are wired back to back (no network): every SecAgg stage crosses as envelopes,
sites drop out at chosen stages, and messages are forged or replayed.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.records import ClientUpdate
from fedcare.he.ckks import generate_keys
from fedcare.runtime.coordinator import Phase
from fedcare.runtime.encrypted_round import HE
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import UpdateMessage
from fedcare.runtime.secure_wire import SECAGG, session_of
from tests.runtime.test_protocol_study import ROUNDS, deploy, heart, heart_plan, simulate

__all__ = ["heart"]  # the module-scoped dataset fixture

SECURE = {"secure": "secure_aggregation"}
DISTRIBUTED = {
    "secure": "secure_aggregation",
    "dp": {"mode": "distributed", "noise_multiplier": 0.8, "clip_norm": 0.5},
}


def connected(heart, plan, tmp_path, **kwargs):
    net = deploy(heart, plan, tmp_path, **kwargs)
    for name in heart.site_names:
        net.connect(name)
    return net


def run_until_step(net, site, step):
    """Deliver messages until ``site``'s next secagg message of ``step`` is next in line."""
    for _ in range(10_000):
        if not net.queue:
            raise AssertionError(f"no '{step}' from {site} came")
        direction, name, env = net.queue[0]
        if (direction, name, env.kind) == ("coordinator", site, SECAGG) and (
            env.header["step"] == step
        ):
            return
        net.step()
    raise AssertionError("too many steps")


def test_secagg_deployed_reaches_the_simulators_secure_model(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", SECURE)
    net = connected(heart, plan, tmp_path)
    seen = []
    original = net.coordinator.handle

    def spy(env, now):
        seen.append(env)
        return original(env, now)

    net.coordinator.handle = spy
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    assert [r["participants"] for r in net.coordinator.history] == [
        r.participants for r in sim.history
    ]
    # No float update ever reached the coordinator: only ring vectors (uint32).
    updates = [e for e in seen if e.vector is not None and e.kind != "eval_result"]
    assert updates and all(e.kind == SECAGG and e.vector.dtype == np.uint32 for e in updates)


@pytest.mark.parametrize(
    "step", ["advertise_keys", "share_keys", "masked_input", "unmask_response"]
)
def test_a_site_lost_at_any_stage_leaves_the_round_to_the_others(heart, tmp_path, step):
    plan = heart_plan(heart, "fedavg", SECURE, rounds=1)
    net = connected(heart, plan, tmp_path)
    victim = heart.site_names[2]
    run_until_step(net, victim, step)
    net.disconnect(victim)
    net.run()
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FINISHED
    participants = coordinator.history[0]["participants"]
    # Its masked input is in the sum once sent; before that, the others' sum is unmasked.
    sent_input = step == "unmask_response"
    assert (victim in participants) is sent_input
    assert len(participants) == len(heart.site_names) - (0 if sent_input else 1)


def test_too_many_dropouts_abort_the_sum_and_retry_the_round_never_a_wrong_sum(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", SECURE, rounds=1)
    net = connected(heart, plan, tmp_path)
    first, second = heart.site_names[:2]
    run_until_step(net, first, "masked_input")
    start = net.coordinator.state.params.copy()
    net.disconnect(first)
    net.disconnect(second)  # 2 of 4 left: below the threshold of 3
    net.run()
    events = [e.kind for e in net.coordinator.drain_events()]
    assert "secure_sum_aborted" in events and "round_failed" in events
    np.testing.assert_array_equal(net.coordinator.state.params, start)  # nothing applied
    # The sites come back and the retried round completes with all four.
    for name in (first, second):
        net.connect(name)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    assert net.coordinator.history[0]["participants"] == list(heart.site_names)


def test_a_replayed_or_forged_secagg_message_is_rejected_and_the_round_goes_on(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", SECURE, rounds=1)
    net = connected(heart, plan, tmp_path)
    site = heart.site_names[1]
    run_until_step(net, site, "share_keys")
    _, _, env = net.queue[0]
    net.step()
    # Replayed: the same envelope (same nonce) a second time.
    replies = net.coordinator.handle(env.from_peer(site), net.now)
    assert replies and replies[0].envelope.header["code"] == "rejected"
    # Forged: another site's shares, re-sent (fresh nonce) by a site that is not their author.
    forged = type(env).create(SECAGG, env.run_id, env.round, dict(env.header), None)
    forger = heart.site_names[3]
    replies = net.coordinator.handle(forged.from_peer(forger), net.now)
    assert replies[0].envelope.header["code"] == "secagg_rejected"
    net.run()
    # The forger's own part is refused; the others' sum is still unmasked.
    assert net.coordinator.phase is Phase.FINISHED
    assert net.coordinator.history[0]["participants"] == [
        s for s in heart.site_names if s != forger
    ]


def test_a_plain_update_is_refused_when_the_plan_aggregates_securely(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", SECURE, rounds=1)
    net = connected(heart, plan, tmp_path)
    site = heart.site_names[0]
    run_until_step(net, site, "advertise_keys")
    delta = np.zeros(net.coordinator.size, dtype=np.float32)
    plain = UpdateMessage.from_update("run-1", 0, 0, ClientUpdate(delta, 10.0), 10)
    replies = net.coordinator.handle(plain.to_envelope().from_peer(site), net.now)
    assert replies[0].envelope.header["accepted"] is False
    assert "aggregates securely" in replies[0].envelope.header["reason"]


def test_distributed_dp_with_secagg_finishes_and_reports_epsilon(heart, tmp_path):
    plan = heart_plan(heart, "fedavg", DISTRIBUTED, rounds=2)
    net = connected(heart, plan, tmp_path)
    victim = heart.site_names[0]
    run_until_step(net, victim, "masked_input")
    net.disconnect(victim)  # its noise share is lost with it; the release accounts for it
    net.run()
    for name in [victim]:
        net.connect(name)
    net.run()
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FINISHED
    eps = [r["epsilon"] for r in coordinator.history]
    assert 0 < eps[0] < eps[1]
    assert victim not in coordinator.history[0]["participants"]


def test_local_dp_is_noised_at_each_site_and_accounted_per_site(heart, tmp_path):
    params = {"dp": {"mode": "local", "noise_multiplier": 1.0, "clip_norm": 0.5}}
    plan = heart_plan(heart, "fedavg", params, rounds=2)
    net = connected(heart, plan, tmp_path)
    net.run()
    coordinator = net.coordinator
    assert coordinator.phase is Phase.FINISHED
    assert set(coordinator.private.site_accountants) == set(heart.site_names)
    assert coordinator.history[-1]["epsilon"] > coordinator.history[0]["epsilon"] > 0
    # The noise is the sites' own: the same plan twice gives different models.
    again = connected(heart, plan, tmp_path / "again")
    again.run()
    assert np.abs(again.coordinator.final_params - coordinator.final_params).max() > 1e-3


# -- CKKS: the hospitals share a key set; the coordinator adds blind ----------------------


@pytest.fixture(scope="module")
def he_keys():
    return generate_keys()


def with_keys(net, keys, skip=()):
    for name, site in net.sites.items():
        if name not in skip:
            site.he_keys = keys
    return net


def test_ckks_deployed_reaches_the_simulators_encrypted_model(heart, tmp_path, he_keys):
    plan = heart_plan(heart, "fedavg", {"secure": "encrypt"})
    net = with_keys(deploy(heart, plan, tmp_path), he_keys)
    seen = []
    original = net.coordinator.handle
    net.coordinator.handle = lambda env, now: seen.append(env) or original(env, now)
    for name in heart.site_names:
        net.connect(name)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    sim = simulate(heart, plan)  # CKKS too, under its own keys: equal up to CKKS precision
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-4)
    inputs = [e for e in seen if e.kind == HE and e.header["step"] == "encrypted_update"]
    assert len(inputs) == ROUNDS * len(heart.site_names)
    assert all(e.vector.dtype == np.uint8 for e in inputs)  # ciphertexts only
    # Plain floats reach the coordinator only as the decrypted sum, once per round.
    sums = [e for e in seen if e.kind == HE and e.header["step"] == "decrypted_sum"]
    assert len(sums) == ROUNDS and all(e.header["summands"] == 4 for e in sums)


def test_a_site_without_the_key_set_refuses_an_encrypted_plan(heart, tmp_path, he_keys):
    plan = heart_plan(heart, "fedavg", {"secure": "encrypt"}, rounds=1)
    keyless = heart.site_names[3]
    net = with_keys(deploy(heart, plan, tmp_path), he_keys, skip=(keyless,))
    for name in heart.site_names:
        net.connect(name)
    net.run()
    errors = [e for e in net.coordinator.drain_events() if e.kind == "site_error"]
    assert any(e.site == keyless and "--he-keys" in e.detail["message"] for e in errors)


def test_the_next_contributor_decrypts_when_the_first_one_drops(heart, tmp_path, he_keys):
    plan = heart_plan(heart, "fedavg", {"secure": "encrypt"}, rounds=1)
    net = with_keys(deploy(heart, plan, tmp_path), he_keys)
    for name in heart.site_names:
        net.connect(name)
    first = heart.site_names[0]
    for _ in range(10_000):  # until the coordinator asks the first site to decrypt
        direction, name, env = net.queue[0]
        if (direction, name, env.kind) == ("site", first, HE):
            break
        net.step()
    net.disconnect(first)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    # The sum was already made with all four inputs; another site opened it.
    assert net.coordinator.history[0]["participants"] == list(heart.site_names)


def test_a_site_refuses_to_decrypt_a_single_update(heart, tmp_path, he_keys):
    plan = heart_plan(heart, "fedavg", {"secure": "encrypt"}, rounds=1)
    net = with_keys(deploy(heart, plan, tmp_path), he_keys)
    for name in heart.site_names:
        net.connect(name)
    victim, helper = heart.site_names[0], heart.site_names[1]
    for _ in range(10_000):  # capture the victim's ciphertext on its way
        direction, name, env = net.queue[0]
        if (direction, name, env.kind) == ("coordinator", victim, HE):
            break
        net.step()
    net.run(stop=lambda: net.sites[helper].secure_turn is not None)
    session, attempt = session_of(env)
    assert net.sites[helper].secure_turn == (env.round, attempt, session)
    # A curious coordinator asks a site to "decrypt the aggregate", sending one update.
    header = {"step": "decrypt", "session": env.header["session"], "attempt": attempt}
    ask = Envelope.create(HE, env.run_id, env.round, header, env.vector)
    replies = net.sites[helper].handle(ask.from_peer("coordinator"), net.now)
    assert replies[0].kind == "error_report"
    assert "refuses to decrypt an aggregate of 1 update" in replies[0].header["message"]
