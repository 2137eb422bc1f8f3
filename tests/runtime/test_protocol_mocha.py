"""MOCHA deployed: the coordinator learns the task relationship from the sites' own models.

Each round the coordinator sends every sampled site only its own context (its model and
its objective under the relationship, never another site's model), the site trains its
personal model from it and sends it back beside its update, and the server step keeps it.
Deployed through the in-memory loopback, the run must reach the simulator's global model
and every site's personal model within 1e-6, and a coordinator killed mid-run and resumed
from its checkpoint file must end where an uninterrupted run ends.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedcare.algorithms.mocha import MODELS
from fedcare.algorithms.personal import PERSONAL_MODEL
from fedcare.core.errors import ProtocolError
from fedcare.data.heart import load_heart_disease
from fedcare.runtime.checkpoint import load_checkpoint, save_checkpoint
from fedcare.runtime.coordinator import CoordinatorMachine, Phase
from fedcare.runtime.messages import ErrorReport, TrainRequest, UpdateMessage
from fedcare.runtime.sampling import Participation
from tests.runtime.test_coordinator_resume import (
    connect_all,
    evaluated_by_some,
    run_keeping_snapshots,
)
from tests.runtime.test_protocol_study import deploy, heart_plan, simulate

MOCHA = {"lambda1": 0.1, "lambda2": 0.01}


@pytest.fixture(scope="module")
def heart():
    return load_heart_disease()


@pytest.mark.parametrize(
    ("params", "extra"),
    [
        ({}, {}),
        ({}, {"participation": Participation(0.5, 2)}),  # the others keep their row
        ({"upload": [{"stage": "quantize"}]}, {}),  # the model rides after encoded bytes
        ({"aggregator": "median"}, {}),  # robust rule over whole updates
    ],
    ids=["all-sites", "half-sampled", "quantize", "median"],
)
def test_deployed_mocha_reaches_the_simulators_global_and_personal_models(
    heart, tmp_path, params, extra
):
    plan = heart_plan(heart, "mocha", {**MOCHA, **params}, rounds=3, **extra)
    net = deploy(heart, plan, tmp_path)
    connect_all(net)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED, net.coordinator.failure
    sim = simulate(heart, plan)
    np.testing.assert_allclose(net.coordinator.final_params, sim.state.params, atol=1e-6)
    deployed, simulated = net.coordinator.history, sim.history
    assert [r["participants"] for r in deployed] == [r.participants for r in simulated]
    # The coordinator's row of every site's model is the simulator's, and so is each
    # site's own personal model, evaluated at the end like the simulator evaluates it.
    np.testing.assert_allclose(
        net.coordinator.state.arrays[MODELS], sim.state.arrays[MODELS], atol=1e-6
    )
    for site in heart.site_names:
        np.testing.assert_allclose(
            net.sites[site].state[PERSONAL_MODEL],
            sim.site_states[site][PERSONAL_MODEL],
            atol=1e-6,
        )
        assert net.coordinator.final_eval[site].summary() == pytest.approx(
            sim.final_eval[site].summary(), nan_ok=True
        )
    rows = net.coordinator.state.arrays[MODELS].reshape(len(heart.site_names), -1)
    assert not np.allclose(rows[0], rows[1])  # the sites' models really are their own


def test_each_site_receives_only_its_own_model(heart, tmp_path):
    plan = heart_plan(heart, "mocha", MOCHA, rounds=2)
    net = deploy(heart, plan, tmp_path)
    connect_all(net)
    net.run(stop=lambda: net.coordinator.round == 1)
    requests = []
    while net.queue and len(requests) < len(heart.site_names):
        direction, name, env = net.queue[0]
        if direction == "site" and env.kind == TrainRequest.KIND:
            requests.append((name, TrainRequest.from_envelope(env)))
        net.step()
    models = net.coordinator.state.arrays[MODELS].reshape(len(heart.site_names), -1)
    assert len(requests) == len(heart.site_names)
    for name, request in requests:
        assert MODELS not in request.arrays  # the other sites' models stay at the coordinator
        assert sorted(request.site_context) == ["correction", "prox_mu", "start"]
        np.testing.assert_array_equal(request.site_context["start"], models[plan.site_index(name)])
        assert request.site_context["prox_mu"].dtype == np.float64  # exact, like the simulator


def test_a_killed_coordinator_resumes_mocha_from_its_checkpoint_file(heart, tmp_path):
    plan = heart_plan(heart, "mocha", MOCHA, rounds=3)
    reference = deploy(heart, plan, tmp_path / "reference")
    connect_all(reference)
    reference.run()

    net = deploy(heart, plan, tmp_path / "crash")
    connect_all(net)
    last = run_keeping_snapshots(net, evaluated_by_some(net, 1))[-1]
    assert last.snapshot is not None
    state, extra = last.snapshot
    save_checkpoint(tmp_path / "ckpt", state, {}, extra)  # what the driver writes
    saved = load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_array_equal(saved.state.arrays[MODELS], state.arrays[MODELS])
    net.coordinator = CoordinatorMachine.restore(plan, saved.state, saved.extra)
    net.queue.clear()
    connect_all(net)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED, net.coordinator.failure
    np.testing.assert_array_equal(net.coordinator.final_params, reference.coordinator.final_params)
    np.testing.assert_array_equal(
        net.coordinator.state.arrays[MODELS], reference.coordinator.state.arrays[MODELS]
    )


def _first_update(heart, tmp_path, strategy="mocha", params=MOCHA):
    """A coordinator with its first round open, and the first update sent to it."""
    plan = heart_plan(heart, strategy, params, rounds=1)
    net = deploy(heart, plan, tmp_path)
    connect_all(net)
    while not any(d == "coordinator" and e.kind == UpdateMessage.KIND for d, _, e in net.queue):
        net.step()
    _, name, env = next(m for m in net.queue if m[2].kind == UpdateMessage.KIND)
    return net, name, UpdateMessage.from_envelope(env)


@pytest.mark.parametrize(
    ("personal", "reason"),
    [
        (None, "collects every site's personal model, and the update carries none"),
        (np.zeros(3, np.float32), "personal model has 3 values, the model"),
        ("nan", "personal model holds a non-finite value"),
    ],
    ids=["missing", "wrong-size", "non-finite"],
)
def test_the_coordinator_refuses_an_update_without_a_usable_personal_model(
    heart, tmp_path, personal, reason
):
    net, name, update = _first_update(heart, tmp_path)
    if isinstance(personal, str):
        personal = np.full_like(update.personal, np.nan)
    forged = replace(update, personal=personal)
    replies = net.coordinator.handle(forged.to_envelope().from_peer(name), net.now)
    assert net.coordinator.current is not None
    assert reason in net.coordinator.current.rejected[name]
    assert any(r.envelope.kind == "update_verdict" for r in replies)


def test_a_strategy_that_keeps_personal_models_at_the_sites_refuses_one_sent(heart, tmp_path):
    net, name, update = _first_update(heart, tmp_path, "ditto", {})
    assert update.personal is None  # Ditto's personal model never leaves the site
    forged = replace(update, personal=np.zeros_like(update.delta))
    net.coordinator.handle(forged.to_envelope().from_peer(name), net.now)
    assert net.coordinator.current is not None
    assert (
        "carries a personal model, which strategy 'ditto' keeps at the sites"
        in (net.coordinator.current.rejected[name])
    )


def test_a_site_refuses_a_request_whose_context_is_not_the_plans(heart, tmp_path):
    plan = heart_plan(heart, "mocha", MOCHA, rounds=1)
    net = deploy(heart, plan, tmp_path)
    connect_all(net)
    while not any(d == "site" and e.kind == TrainRequest.KIND for d, _, e in net.queue):
        net.step()
    _, name, env = next(m for m in net.queue if m[2].kind == TrainRequest.KIND)
    request = TrainRequest.from_envelope(env)
    context = dict(request.site_context)
    context["start"] = context["start"][:-1]
    forged = replace(request, site_context=context).to_envelope()
    replies = net.sites[name].handle(forged.from_peer("coordinator"), net.now)
    [report] = [ErrorReport.from_envelope(r) for r in replies]
    assert report.code == "train_refused"
    assert "site context entry 'start' has 13 values, expected 14" in report.message


def test_a_train_request_cannot_carry_a_context_entry_twice():
    request = TrainRequest(
        run_id="run-1",
        round=0,
        plan_hash="h",
        params=np.zeros(4, np.float32),
        arrays={},
        seed=0,
        site_index=0,
        sampled=["a"],
        site_context={"start": np.zeros(4, np.float32), "prox_mu": np.ones(1)},
    )
    env = request.to_envelope()
    header = {**env.header, "site_context_exact": {"start": [0.0], "prox_mu": [1.0]}}
    with pytest.raises(ProtocolError, match="both in the vector and in header field"):
        TrainRequest.from_envelope(replace(env, header=header))


def test_a_site_context_and_a_personal_model_cross_the_wire_unchanged():
    prox_mu = np.array([0.2 + 1e-12], dtype=np.float64)  # not a float32 value
    request = TrainRequest(
        run_id="run-1",
        round=3,
        plan_hash="h",
        params=np.arange(4, dtype=np.float32),
        arrays={"scaffold/control": np.ones(4, np.float32)},
        seed=0,
        site_index=1,
        sampled=["a", "b"],
        site_context={"start": np.full(4, 0.5, np.float32), "prox_mu": prox_mu},
    )
    back = TrainRequest.from_envelope(request.to_envelope())
    assert back.site_context["prox_mu"][0] == prox_mu[0]
    np.testing.assert_array_equal(back.site_context["start"], np.full(4, 0.5, np.float32))
    assert list(back.arrays) == ["scaffold/control"]

    update = UpdateMessage(
        "run-1", 3, 0, np.ones(4, np.float32), {}, 1.0, 10, personal=np.arange(4, dtype=np.float32)
    )
    received = UpdateMessage.from_envelope(update.to_envelope())
    np.testing.assert_array_equal(received.personal, np.arange(4, dtype=np.float32))
    assert received.extras == {}
