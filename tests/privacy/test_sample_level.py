"""Sample-level DP-SGD settings: the parser, per-site calibration and accounting."""

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.privacy.sample_level import SampleLevelPrivacy, SitePlan, sampling_rate
from fedcare.privacy.spec import SampleDPSpec, parse_sample_dp


def direct_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """What dp-accounting says, asked directly."""
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


def test_parse_sample_dp_reads_every_setting():
    spec = parse_sample_dp(
        {"noise_multiplier": 1.1, "delta": 1e-6, "clip_norm": 0.5, "accountant": "pld"}
    )
    assert spec == SampleDPSpec(noise_multiplier=1.1, delta=1e-6, clip_norm=0.5, accountant="pld")
    assert parse_sample_dp({"epsilon": 2}).epsilon == 2.0
    assert "sample-level DP-SGD ε=2" in parse_sample_dp({"epsilon": 2}).label


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"epsilon": 1, "noise_multiplier": 1}, "exactly one of 'epsilon'"),
        ({"clip_norm": 1.0}, "found neither"),
        ({}, "found neither"),
        ({"epsilon": 1, "sigma": 2}, "unknown key(s) ['sigma']"),
        ({"epsilon": -1}, "'epsilon' must be finite and > 0"),
        ({"epsilon": math.inf}, "'epsilon' must be finite and > 0"),
        ({"noise_multiplier": 0}, "'noise_multiplier' must be finite and > 0"),
        ({"noise_multiplier": "lots"}, "'noise_multiplier' must be a number"),
        ({"epsilon": 1, "delta": 1.5}, "'delta' must be < 1"),
        ({"epsilon": 1, "delta": 0}, "'delta' must be finite and > 0"),
        ({"epsilon": 1, "clip_norm": 0}, "'clip_norm' must be finite and > 0"),
        ({"epsilon": 1, "accountant": "moments"}, "'accountant' must be one of"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_parse_sample_dp_refuses_bad_values_naming_the_field(raw, names):
    with pytest.raises(ConfigError) as err:
        parse_sample_dp(raw, where="strategy 'fedavg' sample_dp")
    assert "strategy 'fedavg' sample_dp" in str(err.value)
    assert names in str(err.value)


def test_a_given_noise_multiplier_is_used_at_every_site():
    spec = SampleDPSpec(noise_multiplier=1.3)
    plan = SitePlan.of(spec, 100, TrainSpec(batch_size=10, epochs=2), rounds=5)
    assert plan == SitePlan(1.3, 0.1, 20)
    assert plan.epsilon_after(spec, 0) == 0.0
    assert plan.epsilon_after(spec, 3) == pytest.approx(direct_epsilon(1.3, 0.1, 60, 1e-5))


def test_calibration_is_per_site_and_each_site_reaches_the_target():
    """A small site (large q) needs more noise than a large one for the same epsilon."""
    spec = SampleDPSpec(epsilon=2.0, delta=1e-5)
    train = TrainSpec(batch_size=8, steps=5)
    small, large = (SitePlan.of(spec, n, train, rounds=4) for n in (16, 400))
    assert small.sampling_rate == 0.5 and large.sampling_rate == 0.02
    assert small.noise_multiplier > large.noise_multiplier
    for plan in (small, large):
        eps = direct_epsilon(plan.noise_multiplier, plan.sampling_rate, 20, 1e-5)
        assert 2.0 - 0.01 <= eps <= 2.0


@settings(max_examples=4, deadline=None)
@given(
    target=st.floats(0.5, 8.0),
    n=st.integers(20, 2000),
    steps=st.integers(1, 40),
)
def test_calibrated_noise_keeps_the_full_accountants_epsilon_just_under_the_target(
    target, n, steps
):
    spec = SampleDPSpec(epsilon=target, delta=1e-6)
    plan = SitePlan.of(spec, n, TrainSpec(batch_size=10, steps=steps), rounds=2)
    eps = direct_epsilon(plan.noise_multiplier, plan.sampling_rate, 2 * steps, 1e-6)
    assert target - 0.01 <= eps <= target


def test_an_unreachable_target_names_the_site_size_and_steps():
    spec = SampleDPSpec(epsilon=1e-4, delta=1e-12)
    with pytest.raises(ConfigError, match="a site with 10 rows"):
        SitePlan.of(spec, 10, TrainSpec(batch_size=None, steps=5000), rounds=1000)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10_000), batch=st.one_of(st.none(), st.integers(1, 500)))
def test_sampling_rate_is_the_expected_batch_fraction(n, batch):
    q = sampling_rate(n, TrainSpec(batch_size=batch))
    assert 0 < q <= 1
    assert q == (1.0 if batch is None else min(1.0, batch / n))


def test_run_accounts_each_site_separately_and_survives_a_checkpoint():
    spec = SampleDPSpec(noise_multiplier=1.0)
    train = TrainSpec(batch_size=5, steps=3)
    run = SampleLevelPrivacy(spec, {"a": 50, "b": 10}, train, rounds=3)
    assert run.describe()["sampling_rate"] == {"a": 0.1, "b": 0.5}
    run.accountants["a"].record(1.0, 0.1, 3)  # only site a trained in round 1
    first = run.close_round(1)
    assert first["b"] == 0.0 and first["a"] == pytest.approx(direct_epsilon(1.0, 0.1, 3, 1e-5))
    copy = SampleLevelPrivacy(spec, {"a": 50, "b": 10}, train, rounds=3)
    copy.restore(run.to_dict())
    assert copy.epsilons() == run.epsilons()
    with pytest.raises(ConfigError, match="sites"):
        SampleLevelPrivacy(spec, {"a": 50}, train, rounds=3).restore(run.to_dict())
