"""Personalisation: what stays at each site, and what each site ends up using."""

import numpy as np
import pytest

from fedcare.algorithms.personal import LOCAL_VALUES, PERSONAL_MODEL
from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.ml.torch_adapter import local_tensor_mask
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)


def run(dataset, strategy, params=None, model_params=None, rounds=3, **kwargs):
    model = build_model("mlp", dataset.input_shape, 2, **(model_params or {"hidden": (8,)}))
    sim = FederatedSimulation(
        module=model,
        dataset=dataset,
        strategy=build_strategy(strategy, params or {}),
        spec=SPEC,
        rounds=rounds,
        seed=0,
        **kwargs,
    )
    return sim, sim.run()


def test_fedper_keeps_each_head_at_its_site_and_shares_the_body(toy_dataset):
    sim, result = run(toy_dataset, "fedper")
    head = sim.local_mask
    assert head is not None and head.sum() == 8 + 1  # last Linear(8 -> 1): weight + bias
    models = np.stack(result.final_params)
    assert len(models) == 4
    np.testing.assert_array_equal(
        models[:, ~head], np.broadcast_to(models[0, ~head], models[:, ~head].shape)
    )
    assert not np.allclose(models[0, head], models[1, head])
    # Heads are never uploaded: each site sends only the shared part.
    assert result.history[0].upload_bytes == 4 * int((~head).sum()) * 4
    assert all(LOCAL_VALUES in s for s in result.site_states.values())


def test_fedbn_keeps_normalisation_layers_local(toy_dataset):
    sim, result = run(toy_dataset, "fedbn", model_params={"hidden": (8,), "norm": True})
    norm = local_tensor_mask(sim.module, sim.trainer.layout, "norm")
    assert sim.trainer.mode == "sequential"  # batch-norm buffers cannot be vmapped
    models = np.stack(result.final_params)
    assert not np.allclose(models[0, norm], models[2, norm])
    np.testing.assert_array_equal(models[1, ~norm], models[3, ~norm])


def test_fedbn_on_a_model_without_normalisation_is_refused(toy_dataset):
    with pytest.raises(Exception, match="no normalisation layer"):
        run(toy_dataset, "fedbn")


def test_ditto_trains_a_personal_model_per_site_and_reports_the_global_one_too(toy_dataset):
    _, result = run(toy_dataset, "ditto", {"ditto_lambda": 0.5})
    assert all(PERSONAL_MODEL in s for s in result.site_states.values())
    np.testing.assert_array_equal(
        result.final_params[2], result.site_states["site2"][PERSONAL_MODEL]
    )
    assert set(result.reference_evals["global"]) == set(toy_dataset.site_names)


def test_fine_tuning_moves_each_site_away_from_the_global_model(toy_dataset):
    _, plain = run(toy_dataset, "fedavg")
    _, tuned = run(toy_dataset, "fedavg", {"finetune_epochs": 2})
    assert len(tuned.final_params) == 4
    assert not np.allclose(tuned.final_params[0], plain.final_params[0])


def test_ditto_resume_equals_uninterrupted(toy_dataset, tmp_path):
    _, full = run(toy_dataset, "ditto", rounds=4)
    run(toy_dataset, "ditto", rounds=2, checkpoint_dir=tmp_path)
    sim = FederatedSimulation(
        module=build_model("mlp", toy_dataset.input_shape, 2, hidden=(8,)),
        dataset=toy_dataset,
        strategy=build_strategy("ditto"),
        spec=SPEC,
        rounds=4,
        seed=0,
        checkpoint_dir=tmp_path,
    )
    resumed = sim.run(resume=True)
    for a, b in zip(full.final_params, resumed.final_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_personalisation_parameters_are_checked():
    with pytest.raises(ConfigError, match="ditto_lambda"):
        build_strategy("ditto", {"ditto_lambda": -1})
    with pytest.raises(ConfigError, match="only applies to ditto"):
        build_strategy("fedavg", {"ditto_lambda": 0.1})


def test_mocha_learns_one_linear_model_per_site(toy_dataset):
    model = build_model("logistic", toy_dataset.input_shape, 2)
    sim = FederatedSimulation(
        module=model,
        dataset=toy_dataset,
        strategy=build_strategy("mocha", {"lambda1": 0.3}),
        spec=SPEC,
        rounds=3,
        seed=0,
    )
    result = sim.run()
    models = np.stack(result.final_params)
    assert models.shape[0] == 4
    assert not np.allclose(models[0], models[1])
    assert result.state is not None
    assert result.state.arrays["mocha/models"].shape == (4 * models.shape[1],)


def test_divergence_is_reported_not_silently_averaged(toy_dataset):
    from fedcare.core.errors import TrainingDivergedError

    model = build_model("mlp", toy_dataset.input_shape, 2, hidden=(8,))
    sim = FederatedSimulation(
        module=model,
        dataset=toy_dataset,
        strategy=build_strategy("fedavg"),
        spec=TrainSpec(optimizer="sgd", lr=1e30, epochs=1, batch_size=8),
        rounds=2,
        seed=0,
    )
    with pytest.raises(TrainingDivergedError, match=r"lower local\.lr"):
        sim.run()
