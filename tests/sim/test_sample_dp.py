"""The simulator under sample-level DP-SGD: who trains, what each site spends, resume."""

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.models import build_model
from fedcare.runtime.sampling import Participation
from fedcare.sim.engine import FederatedSimulation

SPEC = TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8)
Z = 1.1


def simulate(
    dataset, strategy="fedavg", rounds=3, seed=0, sample_dp=None, model=None, spec=SPEC, **kw
):
    params = {} if sample_dp is False else {"sample_dp": sample_dp or {"noise_multiplier": Z}}
    sim = FederatedSimulation(
        module=model or build_model("mlp", dataset.input_shape, dataset.num_classes, hidden=(8,)),
        dataset=dataset,
        strategy=build_strategy(strategy, params),
        spec=spec,
        rounds=rounds,
        seed=seed,
        **kw,
    )
    return sim, sim.run()


def direct_epsilon(z: float, q: float, steps: int, delta: float = 1e-5) -> float:
    if steps == 0:
        return 0.0
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


def test_each_sites_epsilon_never_falls_and_equals_dp_accounting_for_its_steps(toy_dataset):
    """Half the sites train each round; a site that sits a round out spends nothing in it."""
    _, result = simulate(toy_dataset, rounds=4, participation=Participation(0.5, 1))
    names = toy_dataset.site_names
    trained = dict.fromkeys(names, 0)
    previous = dict.fromkeys(names, 0.0)
    for record in result.history:
        assert set(record.sample_epsilon) == set(names)
        for name in names:
            assert record.sample_epsilon[name] >= previous[name]
            assert (record.sample_epsilon[name] > previous[name]) == (name in record.participants)
        for name in record.participants:
            trained[name] += 1
        previous = record.sample_epsilon
    assert 0 < min(trained.values()) < max(trained.values())  # the check sees both cases
    for site, name in zip(toy_dataset.sites, names, strict=True):
        n = site.x_train.shape[0]
        steps = trained[name] * -(-n // SPEC.batch_size)
        expected = direct_epsilon(Z, SPEC.batch_size / n, steps)
        assert previous[name] == pytest.approx(expected, rel=1e-9)
    assert result.sample_dp["noise_multiplier"] == dict.fromkeys(names, Z)
    assert result.sample_dp["delta"] == 1e-5


def test_dp_sgd_runs_are_reproducible_private_and_still_learn(toy_dataset):
    def run(seed=0, sample_dp=None):
        model = build_model("logistic", toy_dataset.input_shape, 2)
        spec = TrainSpec(lr=0.3, batch_size=8)
        sample_dp = {"noise_multiplier": 0.5, "clip_norm": 2.0} if sample_dp is None else False
        return simulate(toy_dataset, seed=seed, sample_dp=sample_dp, model=model, spec=spec)[1]

    a, b, other_seed, plain = run(), run(), run(seed=1), run(sample_dp=False)
    np.testing.assert_array_equal(a.final_params[0], b.final_params[0])
    assert not np.array_equal(a.final_params[0], other_seed.final_params[0])
    assert not np.allclose(a.final_params[0], plain.final_params[0], atol=1e-3)
    assert a.history[-1].mean_site("accuracy") > 0.7  # two balanced classes: chance is 0.5


def test_runs_without_sample_dp_record_no_sample_epsilon(toy_dataset):
    _, result = simulate(toy_dataset, rounds=2, sample_dp=False)
    assert all(r.sample_epsilon is None for r in result.history)
    assert result.sample_dp == {}


def test_resume_from_checkpoint_keeps_the_model_and_every_sites_accountant(toy_dataset, tmp_path):
    _, full = simulate(toy_dataset, "scaffold", rounds=4)
    simulate(toy_dataset, "scaffold", rounds=2, checkpoint_dir=tmp_path)
    sim = FederatedSimulation(
        module=build_model("mlp", toy_dataset.input_shape, 2, hidden=(8,)),
        dataset=toy_dataset,
        strategy=build_strategy("scaffold", {"sample_dp": {"noise_multiplier": Z}}),
        spec=SPEC,
        rounds=4,
        seed=0,
        checkpoint_dir=tmp_path,
    )
    resumed = sim.run(resume=True)
    np.testing.assert_array_equal(resumed.final_params[0], full.final_params[0])
    assert [r.sample_epsilon for r in resumed.history] == [r.sample_epsilon for r in full.history]


def test_cyclic_training_charges_each_site_in_the_chain(toy_dataset):
    _, result = simulate(toy_dataset, "cyclic", rounds=1)
    site, name = toy_dataset.sites[2], toy_dataset.site_names[2]
    n = site.x_train.shape[0]
    expected = direct_epsilon(Z, SPEC.batch_size / n, -(-n // SPEC.batch_size))
    assert result.history[0].sample_epsilon[name] == pytest.approx(expected, rel=1e-9)


def test_a_model_with_batch_norm_is_refused_before_training(toy_dataset):
    model = build_model("mlp", toy_dataset.input_shape, 2, hidden=(8,), norm=True)
    with pytest.raises(ConfigError, match="batch norm"):
        simulate(toy_dataset, model=model)
