"""Survival models trained by federated optimisation with the Cox loss, scored by C-index."""

import functools

import numpy as np
import pytest

from fedcare.algorithms.attacks import AttackSpec
from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset
from fedcare.data.registry import load_dataset
from fedcare.ml.databank import DataBank, site_targets
from fedcare.ml.dp_sgd import DPSGDConfig, DPSGDTrainer
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation

SPEC = TrainSpec(optimizer="sgd", lr=0.1, steps=5, batch_size=16)


@functools.cache
def tcga() -> FederatedDataset:
    return load_dataset("tcga-brca", normalisation="site")


def test_survival_targets_are_time_and_event() -> None:
    site = tcga().sites[0]
    targets = site_targets(site, "train")
    assert targets.dtype == np.float64 and targets.shape == (site.num_train, 2)
    assert site.time_train is not None
    assert np.array_equal(targets[:, 0], site.time_train)
    assert np.array_equal(targets[:, 1], site.y_train)


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_batched_and_sequential_training_reach_the_same_risk_model(model: str) -> None:
    data = tcga()
    bank = DataBank.from_sites(data.sites)
    k = bank.num_sites
    seeds = SeedStream(1)
    schedules = [
        batch_schedule(int(bank.counts[i]), SPEC, seeds.generator("batches", 0, i))
        for i in range(k)
    ]
    module = build_model(model, data.input_shape, data.num_classes)
    results = []
    for mode in ("batched", "sequential"):
        trainer = LocalTrainer(module, data.num_classes, mode=mode)
        starts = np.tile(trainer.initial_vector(), (k, 1))
        objectives = [LocalObjective()] * k
        results.append(trainer.train(bank, list(range(k)), starts, schedules, objectives, SPEC))
    batched, sequential = results
    np.testing.assert_allclose(batched.params, sequential.params, atol=1e-5)
    np.testing.assert_allclose(batched.train_loss, sequential.train_loss, rtol=1e-5)


def simulate(strategy: str, model: str = "logistic", rounds: int = 8, **params: object):
    data = tcga()
    return FederatedSimulation(
        module=build_model(model, data.input_shape, data.num_classes),
        dataset=data,
        strategy=build_strategy(strategy, dict(params)),
        spec=SPEC,
        rounds=rounds,
        seed=0,
    ).run()


@pytest.mark.parametrize(
    ("strategy", "model", "params"),
    [
        ("fedavg", "logistic", {}),
        ("fedadam", "logistic", {"server_lr": 0.05}),
        ("fedprox", "mlp", {"mu": 0.01}),
        ("fedper", "mlp", {}),
    ],
)
def test_federated_strategies_learn_a_risk_score(strategy: str, model: str, params: dict) -> None:
    result = simulate(strategy, model, **params)
    first, last = result.history[0], result.history[-1]
    assert set(last.site_metrics["northeast"]) == {"c_index", "loss", "count"}
    # Concordance over same-site pairs rises well above chance as the Cox loss falls.
    assert last.pooled_metrics["c_index"] > 0.7
    assert last.train_loss < first.train_loss


def test_dp_sgd_is_refused_for_the_cox_loss() -> None:
    with pytest.raises(ConfigError, match="not a sum of per-sample losses"):
        simulate("fedavg", sample_dp={"noise_multiplier": 1.0})
    data = tcga()
    trainer = DPSGDTrainer(
        build_model("logistic", data.input_shape, data.num_classes),
        data.num_classes,
        DPSGDConfig(noise_multiplier=1.0, clip_norm=1.0),
    )
    with pytest.raises(ConfigError, match="client-level DP"):
        trainer.train(
            DataBank.from_sites(data.sites),
            [0],
            np.zeros((1, trainer.layout.size), np.float32),
            [np.zeros((1, 4), np.int64)],
            [LocalObjective()],
            SPEC,
            accountants=[None],  # type: ignore[list-item]
        )


def test_client_level_dp_trains_a_survival_model() -> None:
    result = simulate("fedavg", rounds=3, dp={"noise_multiplier": 0.1, "clip_norm": 5.0})
    assert result.history[-1].epsilon is not None
    assert np.isfinite(result.history[-1].pooled_metrics["c_index"])


def test_label_flipping_is_refused_on_survival_data() -> None:
    data = tcga()
    with pytest.raises(ConfigError, match="label_flip"):
        FederatedSimulation(
            module=build_model("logistic", data.input_shape, data.num_classes),
            dataset=data,
            strategy=build_strategy("fedavg", {}),
            spec=SPEC,
            rounds=1,
            seed=0,
            attack=AttackSpec(kind="label_flip", fraction=0.5),
        )


def test_risk_scores_are_evaluated_on_each_sites_test_rows() -> None:
    result = simulate("fedavg", rounds=2)
    data = tcga()
    for site in data.sites:
        stats = result.final_eval[site.name]
        assert stats.count == site.num_test
        assert 0.0 <= stats.c_index <= 1.0
