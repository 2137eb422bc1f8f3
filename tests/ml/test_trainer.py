"""The batched trainer must reach the same model as a plain PyTorch loop."""

import numpy as np
import pytest
import torch
from torch import nn

from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.ml.databank import DataBank
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from tests.conftest import make_sites


def train_both(model: nn.Module, dataset, spec: TrainSpec, objectives=None, stacked=None):
    bank = DataBank.from_arrays(
        [s.x_train for s in dataset.sites], [s.y_train for s in dataset.sites]
    )
    k = bank.num_sites
    seeds = SeedStream(3)
    schedules = [
        batch_schedule(int(bank.counts[i]), spec, seeds.generator("batches", 0, i))
        for i in range(k)
    ]
    objectives = objectives or [LocalObjective()] * k
    results = {}
    for mode in ("batched", "sequential"):
        trainer = LocalTrainer(model, dataset.num_classes, mode=mode, stacked=stacked)
        starts = np.tile(trainer.initial_vector(), (k, 1))
        results[mode] = trainer.train(bank, list(range(k)), starts, schedules, objectives, spec)
    return results["batched"], results["sequential"]


@pytest.mark.parametrize(
    "spec",
    [
        TrainSpec(optimizer="sgd", lr=0.1, epochs=2, batch_size=8),
        TrainSpec(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, steps=9, batch_size=5),
        TrainSpec(optimizer="sgd", lr=0.5, steps=1, batch_size=None),
    ],
    ids=["sgd-epochs", "momentum-steps", "full-batch"],
)
@pytest.mark.parametrize("stacked", [True, False], ids=["bmm", "vmap"])
def test_batched_equals_sequential_for_mlp_with_uneven_sites(spec, stacked):
    torch.manual_seed(0)
    dataset = make_sites([23, 8, 41], num_features=5)
    model = build_model("mlp", (5,), 2, hidden=(16, 8))
    batched, sequential = train_both(model, dataset, spec, stacked=stacked)
    np.testing.assert_allclose(batched.params, sequential.params, atol=1e-5)
    np.testing.assert_array_equal(batched.num_steps, sequential.num_steps)
    np.testing.assert_allclose(batched.train_loss, sequential.train_loss, atol=1e-5)


@pytest.mark.parametrize("stacked", [True, False], ids=["bmm", "vmap"])
def test_batched_equals_sequential_with_adam_on_multiclass_logistic_regression(stacked):
    torch.manual_seed(0)
    dataset = make_sites([30, 19], num_features=4, num_classes=3)
    model = build_model("logistic", (4,), 3)
    spec = TrainSpec(optimizer="adam", lr=0.01, epochs=3, batch_size=4)
    batched, sequential = train_both(model, dataset, spec, stacked=stacked)
    np.testing.assert_allclose(batched.params, sequential.params, atol=1e-5)


def test_batched_equals_sequential_with_prox_and_correction_terms():
    torch.manual_seed(1)
    dataset = make_sites([20, 35], num_features=3)
    model = build_model("mlp", (3,), 2, hidden=(8,))
    size = LocalTrainer(model, 2).layout.size
    rng = np.random.default_rng(0)
    objectives = [
        LocalObjective(prox_mu=0.3, anchor=rng.normal(size=size).astype(np.float32)),
        LocalObjective(correction=rng.normal(scale=0.1, size=size).astype(np.float32)),
    ]
    spec = TrainSpec(optimizer="sgd", lr=0.05, epochs=2, batch_size=6)
    batched, sequential = train_both(model, dataset, spec, objectives)
    np.testing.assert_allclose(batched.params, sequential.params, atol=1e-5)


def test_cnn_trains_batched_like_sequentially():
    torch.manual_seed(2)
    rng = np.random.default_rng(0)
    from fedcare.data.base import FederatedDataset, SiteData

    def site(name, n):
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 2, n).astype(np.int64)
        return SiteData(name, x, y, x[:2], y[:2])

    dataset = FederatedDataset("img", [site("a", 10), site("b", 7)], "binary", 2, (1, 28, 28))
    model = build_model("cnn", (1, 28, 28), 2, width=4)
    batched, sequential = train_both(
        model, dataset, TrainSpec(optimizer="sgd", lr=0.1, steps=3, batch_size=4)
    )
    np.testing.assert_allclose(batched.params, sequential.params, atol=1e-5)


def test_models_with_batch_norm_fall_back_to_the_sequential_path():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    trainer = LocalTrainer(model, 2, mode="auto")
    assert trainer.mode == "sequential"
    with pytest.raises(ValueError, match="batch-norm"):
        LocalTrainer(model, 2, mode="batched")
    dataset = make_sites([12, 10], num_features=3)
    bank = DataBank.from_arrays(
        [s.x_train for s in dataset.sites], [s.y_train for s in dataset.sites]
    )
    spec = TrainSpec(lr=0.1, epochs=1, batch_size=4)
    schedules = [batch_schedule(n, spec, np.random.default_rng(i)) for i, n in enumerate((12, 10))]
    start = np.tile(trainer.initial_vector(), (2, 1))
    result = trainer.train(bank, [0, 1], start, schedules, [LocalObjective()] * 2, spec)
    # Running statistics (a buffer) moved, and so did the weights.
    running_mean = trainer.layout.slice_of("1.running_mean")
    assert not np.allclose(result.params[0, running_mean], start[0, running_mean])
