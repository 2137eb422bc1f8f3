"""Privacy in the simulator: DP-FedAvg (central, local, distributed), secure aggregation, CKKS."""

import itertools

import numpy as np
import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.models import build_model
from fedcare.sim.engine import FederatedSimulation

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)


def run(dataset, params, rounds=3, **kwargs):
    sim = FederatedSimulation(
        module=build_model("logistic", dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy("fedavg", params),
        spec=SPEC,
        rounds=rounds,
        seed=0,
        **kwargs,
    )
    return sim.run()


def test_secure_aggregation_gives_the_plain_weighted_mean_and_counts_masked_bytes(toy_dataset):
    plain = run(toy_dataset, {})
    masked = run(toy_dataset, {"secure": {"kind": "secure_aggregation", "value_range": 4.0}})
    np.testing.assert_allclose(masked.final_params[0], plain.final_params[0], atol=1e-5)
    size = plain.final_params[0].size
    assert set(masked.history[-1].site_upload_bytes.values()) == {4 * (size + 1) + 64}


def test_ckks_encryption_gives_the_plain_weighted_mean(toy_dataset):
    plain = run(toy_dataset, {}, rounds=2)
    encrypted = run(toy_dataset, {"secure": "encrypt"}, rounds=2)
    np.testing.assert_allclose(encrypted.final_params[0], plain.final_params[0], atol=1e-3)
    size = plain.final_params[0].size
    assert all(b > 4 * size for b in encrypted.history[-1].site_upload_bytes.values())


def test_central_dp_reaches_its_epsilon_round_by_round(toy_dataset):
    result = run(toy_dataset, {"dp": {"epsilon": 2.0, "delta": 1e-5, "clip_norm": 0.5}}, rounds=4)
    eps = [r.epsilon for r in result.history]
    assert all(a < b for a, b in itertools.pairwise(eps))  # only grows
    assert 1.9 <= eps[-1] <= 2.0  # calibrated to the target, on the private side


def test_almost_no_noise_and_no_clipping_is_uniform_fedavg_over_expected_sites(toy_dataset):
    plain = run(toy_dataset, {"weighting": "uniform"}, rounds=2)
    dp = run(toy_dataset, {"dp": {"noise_multiplier": 1e-7, "clip_norm": 100.0}}, rounds=2)
    np.testing.assert_allclose(dp.final_params[0], plain.final_params[0], atol=1e-4)


def test_noise_moves_the_model(toy_dataset):
    a = run(toy_dataset, {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}}, rounds=2)
    b = run(toy_dataset, {"weighting": "uniform"}, rounds=2)
    assert not np.allclose(a.final_params[0], b.final_params[0], atol=1e-3)


@pytest.mark.parametrize(
    "params",
    [
        {"dp": {"mode": "local", "epsilon": 8.0}},
        {
            "dp": {"mode": "distributed", "epsilon": 3.0},
            "secure": {"kind": "secure_aggregation", "value_range": 2.0},
        },
        {"dp": {"epsilon": 3.0, "adaptive_clip": {"target_quantile": 0.5}}},
    ],
)
def test_local_distributed_and_adaptive_dp_run_and_report_epsilon(toy_dataset, params):
    result = run(toy_dataset, params, rounds=3)
    assert result.history[-1].epsilon is not None
    assert 0 < result.history[-1].epsilon <= params["dp"]["epsilon"]


def test_dp_resume_equals_uninterrupted_run(toy_dataset, tmp_path):
    # A fixed noise multiplier: a target epsilon would calibrate z to each run's length.
    params = {"dp": {"noise_multiplier": 1.2, "adaptive_clip": True}}
    full = run(toy_dataset, params, rounds=4)
    run(toy_dataset, params, rounds=2, checkpoint_dir=tmp_path)
    resumed = FederatedSimulation(
        module=build_model("logistic", toy_dataset.input_shape, toy_dataset.num_classes),
        dataset=toy_dataset,
        strategy=build_strategy("fedavg", params),
        spec=SPEC,
        rounds=4,
        seed=0,
        checkpoint_dir=tmp_path,
    ).run(resume=True)
    np.testing.assert_array_equal(resumed.final_params[0], full.final_params[0])
    assert resumed.history[-1].epsilon == pytest.approx(full.history[-1].epsilon)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("scaffold", {"dp": {"epsilon": 1}}, "control variates"),
        ("fedavg", {"dp": {"mode": "distributed", "epsilon": 1}}, "only the sum"),
        ("fedavg", {"dp": {"epsilon": 1}, "secure": "encrypt"}, "distributed"),
        ("fedavg", {"dp": {"epsilon": 1}, "aggregator": "median"}, "sensitivity"),
        (
            "fedavg",
            {"secure": "secure_aggregation", "aggregator": "krum", "aggregator_params": {"f": 1}},
            "only ever sees the sum",
        ),
        ("fedavg", {"secure": "encrypt", "upload": [{"stage": "topk", "fraction": 0.1}]}, "dense"),
        ("fedavg", {"dp": {"epsilon": 1, "noise_multiplier": 1}}, "exactly one"),
        (
            "fedavg",
            {"dp": {"epsilon": 1, "mode": "local", "adaptive_clip": True}},
            "'central' only",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_reason(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(name, params)
