"""One run state value: immutable, checkpointed as safetensors + JSON, and a simulated run
killed after any round resumes to the model an uninterrupted run reaches, bit for bit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import ServerState, TrainSpec
from fedcare.models import build_model
from fedcare.rounds import RunState
from fedcare.runtime.checkpoint import CHECKPOINT_NAME, load_run_state, save_run_state
from fedcare.sim.engine import FederatedSimulation

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)
CENTRAL_DP = {"dp": {"mode": "central", "noise_multiplier": 0.7, "adaptive_clip": {}}}


class KilledError(Exception):
    """Stands for the process dying after a round's checkpoint was written."""


def simulation(dataset, name, params, checkpoint_dir=None) -> FederatedSimulation:
    return FederatedSimulation(
        module=build_model("logistic", dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy(name, params),
        spec=SPEC,
        rounds=4,
        seed=3,
        checkpoint_dir=checkpoint_dir,
    )


def kill_after(round_: int):
    def progress(record) -> None:
        if record.round == round_:
            raise KilledError

    return progress


@pytest.mark.parametrize(("name", "params"), [("mocha", {}), ("fedavg", CENTRAL_DP), ("ditto", {})])
def test_a_killed_simulation_resumes_to_the_uninterrupted_model(
    toy_dataset, tmp_path, name, params
):
    full = simulation(toy_dataset, name, params).run()
    with pytest.raises(KilledError):
        simulation(toy_dataset, name, params, tmp_path).run(kill_after(2))
    assert load_run_state(tmp_path).round == 2
    resumed = simulation(toy_dataset, name, params, tmp_path).run(resume=True)
    for got, want in zip(resumed.final_params, full.final_params, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [r.round for r in resumed.history] == [1, 2, 3, 4]
    assert [r.epsilon for r in resumed.history] == [r.epsilon for r in full.history]


def test_the_checkpoint_is_arrays_plus_json_and_reads_back_as_the_same_value(tmp_path):
    server = ServerState(3, np.arange(4, dtype=np.float32), {"opt/m": np.ones(4, np.float32)})
    run = RunState(
        server=server,
        site_states={"north": {"scaffold/control": np.full(4, 2, np.float32)}},
        history=({"round": 3, "train_loss": 0.5},),
        privacy={"noise_multiplier": 1.1},
    )
    save_run_state(tmp_path, run)
    tensors = load_file(str(tmp_path / CHECKPOINT_NAME))
    assert sorted(tensors) == ["arrays/opt/m", "params", "site/north/scaffold/control"]
    with open(tmp_path / CHECKPOINT_NAME, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    extra = json.loads(header["__metadata__"]["extra"])
    assert extra == {
        "history": [{"round": 3, "train_loss": 0.5}],
        "privacy": {"noise_multiplier": 1.1},
    }
    back = load_run_state(tmp_path)
    assert (back.round, back.history, back.privacy, back.sample_privacy) == (
        3,
        run.history,
        run.privacy,
        None,
    )
    np.testing.assert_array_equal(back.site_states["north"]["scaffold/control"], 2)


def test_a_run_state_is_never_changed_only_replaced():
    run = RunState(ServerState(0, np.zeros(2, np.float32)), site_states={"a": {}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.history = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        run.site_states["b"] = {}  # type: ignore[index]
    later = dataclasses.replace(run, history=({"round": 1},))
    assert run.history == () and later.history == ({"round": 1},)
