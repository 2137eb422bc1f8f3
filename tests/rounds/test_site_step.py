"""The round core driven one site at a time, as a deployed site drives it, gives the
simulator's round for every registered strategy.

The driver below is the whole of what a deployment does with the core: the site trains
the task the core describes (here with the plain sequential trainer, one site at a time)
and hands the outcome back; the coordinator adds each upload to the round's aggregator
and takes the server step. It never looks at the strategy's name.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy, strategy_names
from fedcare.core.records import LocalOutcome, TrainSpec
from fedcare.ml.evaluate import evaluate_vector
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from fedcare.rounds import (
    RunState,
    SiteRound,
    TrainingTask,
    finish_training,
    keep_personal,
    new_aggregator,
    personal_task,
    round_context,
    server_step,
    training_task,
)
from fedcare.sim.engine import FederatedSimulation, initial_params

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)
PARALLEL = [n for n in strategy_names() if build_strategy(n).schedule == "parallel"]
PARAMS = {"fedavg": {"upload": [{"stage": "topk", "fraction": 0.5}]}}  # stages, residuals


def simulation(dataset, name: str) -> FederatedSimulation:
    model = (
        build_model("mlp", dataset.input_shape, 2, hidden=(8,), norm=True)
        if name in ("fedper", "fedbn")  # a head and normalisation layers to keep local
        else build_model("logistic", dataset.input_shape, 2)
    )
    strategy = build_strategy(name, PARAMS.get(name, {}))
    return FederatedSimulation(
        module=model, dataset=dataset, strategy=strategy, spec=SPEC, rounds=2, seed=4
    )


def train_alone(sim: FederatedSimulation, site: int, task: TrainingTask, round_: int):
    """What a deployed site does with a task: train it alone on its own rows."""
    trainer = LocalTrainer(sim.module, 2, mode="sequential")
    count = int(sim.bank.counts[site])
    schedule = batch_schedule(count, sim.spec, sim.seeds.generator(task.purpose, round_, site))
    result = trainer.train(
        sim.bank, [site], task.start[None, :], [schedule], [task.objective], sim.spec
    )
    start_loss = None
    if task.start_loss:
        x, y = sim.bank.site_arrays(site)
        start_loss = evaluate_vector(sim.module, trainer.layout, task.start, x, y, 2).loss
    outcome = LocalOutcome(
        result.params[0], count, int(result.num_steps[0]), float(result.train_loss[0]), start_loss
    )
    return outcome


def round_by_hand(sim: FederatedSimulation, run: RunState):
    """One full-participation round over the core, site after site."""
    strategy, state, names = sim.strategy, run.server, sim.names
    context = round_context(strategy, state, len(names))
    aggregator = new_aggregator(strategy, state.params.size, round_index=1, cohort=len(names))
    plan = SiteRound(strategy, sim.spec, state, len(names), sim.local_mask)
    site_states, sent, collected = dict(run.site_states), {}, {}
    personal = strategy.personal.personal_pass
    for k, name in enumerate(names):
        outcome = train_alone(sim, k, training_task(plan, site_states[name]), state.round)
        rng = sim.seeds.generator("compress", plan.round_index, k)
        site_states[name], upload = finish_training(
            plan, site_states[name], outcome, compress_rng=rng
        )
        aggregator.add(upload.update, k)
        sent[name] = upload.sent_bytes
        if personal is not None:
            sent_to_site = personal.site_context(context, k)  # what the coordinator sends
            task = personal_task(personal, sent_to_site, state, site_states[name])
            trained = train_alone(sim, k, task, state.round).params
            site_states[name] = keep_personal(site_states[name], trained)
            collected[k] = trained
    aggregate = aggregator.result().aggregate
    server = server_step(
        strategy, state, aggregate, len(names), context=context, collected=collected
    )
    return server, site_states, sent


@pytest.mark.parametrize("name", PARALLEL)
def test_a_site_by_site_driver_over_the_core_gives_the_simulators_round(toy_dataset, name):
    sim = simulation(toy_dataset, name)
    start = RunState(
        server=sim.strategy.init_state(initial_params(sim.module, sim.seeds)),
        site_states={n: {} for n in sim.names},
    )
    server, site_states, sent = round_by_hand(sim, start)
    simulated, record = sim.step(start)
    assert record.site_upload_bytes == sent
    np.testing.assert_allclose(server.params, simulated.server.params, atol=1e-5)
    assert server.arrays.keys() == simulated.server.arrays.keys()
    for key, value in server.arrays.items():
        np.testing.assert_allclose(value, simulated.server.arrays[key], atol=1e-5)
    for site, state in site_states.items():
        assert state.keys() == simulated.site_states[site].keys()
        for key, value in state.items():
            np.testing.assert_allclose(value, simulated.site_states[site][key], atol=1e-5)
