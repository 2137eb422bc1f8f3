"""The simulator's round loop: determinism, chunking, resume, participation, schedules."""

import numpy as np
import pytest
import torch

from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.models import build_model
from fedcare.runtime.sampling import Participation
from fedcare.sim.engine import FederatedSimulation, IsolatedTraining

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)


def simulate(dataset, strategy="fedavg", rounds=3, seed=0, **kwargs):
    model = build_model("mlp", dataset.input_shape, dataset.num_classes, hidden=(8,))
    sim = FederatedSimulation(
        module=model,
        dataset=dataset,
        strategy=build_strategy(strategy),
        spec=kwargs.pop("spec", SPEC),
        rounds=rounds,
        seed=seed,
        **kwargs,
    )
    return sim, sim.run()


def test_same_seed_same_model_whatever_torch_global_state(toy_dataset):
    _, a = simulate(toy_dataset)
    torch.manual_seed(1234)
    np.random.seed(99)
    _, b = simulate(toy_dataset)
    np.testing.assert_array_equal(a.final_params[0], b.final_params[0])
    _, c = simulate(toy_dataset, seed=1)
    assert not np.array_equal(a.final_params[0], c.final_params[0])


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedprox"])
def test_result_does_not_depend_on_how_sites_are_chunked(toy_dataset, strategy):
    _, whole = simulate(toy_dataset, strategy, site_chunk=256)
    _, one_by_one = simulate(toy_dataset, strategy, site_chunk=1)
    np.testing.assert_allclose(whole.final_params[0], one_by_one.final_params[0], atol=1e-6)


def test_batched_and_sequential_runs_reach_the_same_model(toy_dataset):
    _, batched = simulate(toy_dataset, "fedadam", rounds=4, mode="batched")
    _, sequential = simulate(toy_dataset, "fedadam", rounds=4, mode="sequential")
    np.testing.assert_allclose(batched.final_params[0], sequential.final_params[0], atol=1e-5)


def test_resume_from_checkpoint_equals_uninterrupted_run(toy_dataset, tmp_path):
    _, full = simulate(toy_dataset, "scaffold", rounds=4)
    # Run two rounds with checkpoints, then a new process-like simulation resumes to four.
    simulate(toy_dataset, "scaffold", rounds=2, checkpoint_dir=tmp_path)
    model = build_model("mlp", toy_dataset.input_shape, 2, hidden=(8,))
    resumed = FederatedSimulation(
        module=model,
        dataset=toy_dataset,
        strategy=build_strategy("scaffold"),
        spec=SPEC,
        rounds=4,
        seed=0,
        checkpoint_dir=tmp_path,
    ).run(resume=True)
    np.testing.assert_array_equal(resumed.final_params[0], full.final_params[0])
    assert [r.round for r in resumed.history] == [1, 2, 3, 4]


def test_partial_participation_samples_the_requested_share_of_sites(toy_dataset):
    _, result = simulate(
        toy_dataset, rounds=5, participation=Participation(fraction=0.5, min_sites=2)
    )
    assert all(len(r.participants) == 2 for r in result.history)
    assert len({tuple(r.participants) for r in result.history}) > 1


def test_cyclic_trains_sites_in_turn(toy_dataset):
    _, result = simulate(toy_dataset, "cyclic", rounds=2)
    assert result.history[-1].participants == toy_dataset.site_names
    assert np.isfinite(result.final_params[0]).all()


def test_federated_training_learns_the_toy_task(toy_dataset):
    _, result = simulate(toy_dataset, "fedavg", rounds=15)
    first, last = result.history[0], result.history[-1]
    assert last.pooled_metrics["loss"] < first.pooled_metrics["loss"]
    assert last.mean_site("accuracy") > 0.7


def test_bytes_moved_are_counted_per_round(toy_dataset):
    sim, result = simulate(toy_dataset, "fedavg", rounds=2)
    size = sim.trainer.layout.size * 4
    assert result.history[0].upload_bytes == 4 * size
    assert result.history[0].download_bytes == 4 * size


def test_local_baseline_keeps_one_model_per_site_and_pooled_one_model(toy_dataset):
    model = build_model("logistic", toy_dataset.input_shape, 2)
    local = IsolatedTraining(
        module=model, dataset=toy_dataset, spec=SPEC, rounds=3, seed=0, pooled=False
    ).run()
    pooled = IsolatedTraining(
        module=model, dataset=toy_dataset, spec=SPEC, rounds=3, seed=0, pooled=True
    ).run()
    assert len(local.final_params) == 4 and len(pooled.final_params) == 1
    assert set(local.final_eval) == set(pooled.final_eval) == set(toy_dataset.site_names)


def test_median_resists_sign_flipping_sites_that_drag_fedavg():
    from fedcare.algorithms.attacks import AttackSpec
    from tests.conftest import make_sites

    dataset = make_sites([60] * 10, num_features=4, seed=3)
    attack = AttackSpec("sign_flip", fraction=0.3, strength=4.0)

    def final_loss(strategy, params):
        model = build_model("logistic", dataset.input_shape, 2)
        sim = FederatedSimulation(
            module=model,
            dataset=dataset,
            strategy=build_strategy(strategy, params),
            spec=SPEC,
            rounds=8,
            seed=0,
            attack=attack,
        )
        return sim.run().history[-1].pooled_metrics["loss"]

    assert final_loss("fedavg", {"aggregator": "median"}) < final_loss("fedavg", {})


def test_compressed_uploads_count_fewer_bytes_and_still_learn():
    from tests.conftest import make_sites

    dataset = make_sites([80] * 4, num_features=200, seed=5)

    def run(params):
        model = build_model("logistic", dataset.input_shape, 2)
        sim = FederatedSimulation(
            module=model,
            dataset=dataset,
            strategy=build_strategy("fedavg", params),
            spec=SPEC,
            rounds=6,
            seed=0,
        )
        return sim.run()

    dense = run({})
    quant = run({"upload": [{"stage": "quantize", "bits": 8, "chunk_size": 1024}]})
    topk = run({"upload": [{"stage": "topk", "fraction": 0.1}]})

    def bytes_per_site(result):
        return result.history[-1].site_upload_bytes

    dense_bytes = bytes_per_site(dense)
    size = sum(p.numel() for p in build_model("logistic", dataset.input_shape, 2).parameters())
    assert all(b == 4 * size for b in dense_bytes.values())  # float32 values
    assert all(dense_bytes[s] / b >= 3.0 for s, b in bytes_per_site(quant).items())
    assert all(dense_bytes[s] / b >= 4.0 for s, b in bytes_per_site(topk).items())
    first = dense.history[0].pooled_metrics["loss"]
    for result in (quant, topk):
        assert result.history[-1].pooled_metrics["loss"] < first
    # Error feedback keeps what was not sent at the site, between rounds.
    assert all("__topk_residual__" in state for state in topk.site_states.values())
