"""Strategy params for sample-level DP-SGD: what composes with it and what is refused."""

import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.privacy.spec import SampleDPSpec

SAMPLE_DP = {"noise_multiplier": 1.0, "clip_norm": 0.5}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavg", {}),
        ("fedprox", {"mu": 0.1}),  # the proximal term is honoured inside DP-SGD
        ("scaffold", {}),  # control variates are computed from the DP-SGD model
        ("fedsgd", {}),
        ("fedadam", {}),
        ("fedper", {}),
        ("cyclic", {}),
        ("fedavg", {"dp": {"epsilon": 3.0}}),  # both units of privacy at once
        ("fedavg", {"dp": {"epsilon": 3.0, "mode": "distributed"}, "secure": "secure_aggregation"}),
        ("fedavg", {"aggregator": "median", "upload": [{"stage": "quantize"}]}),
    ],
)
def test_sample_dp_composes_with_algorithms_client_dp_and_secure_sums(name, params):
    strategy = build_strategy(name, {**params, "sample_dp": SAMPLE_DP})
    assert strategy.sample_dp == SampleDPSpec(noise_multiplier=1.0, clip_norm=0.5)
    assert (strategy.dp is not None) == ("dp" in params)


def test_without_sample_dp_the_strategy_has_none():
    assert build_strategy("fedavg").sample_dp is None


@pytest.mark.parametrize(
    ("name", "params", "why"),
    [
        ("qfedavg", {}, "reports its loss at the global model"),
        ("ditto", {}, "personal model in a second pass"),
        ("mocha", {}, "trained outside DP-SGD and sent to the coordinator"),
        ("fedbn", {}, "batch-norm statistics"),
        ("fedavg", {"finetune_epochs": 2}, "finetune_epochs (2)"),
    ],
)
def test_sample_dp_is_refused_where_rows_reach_a_result_outside_dp_sgd(name, params, why):
    with pytest.raises(ConfigError) as err:
        build_strategy(name, {**params, "sample_dp": SAMPLE_DP})
    assert f"strategy '{name}'" in str(err.value) and why in str(err.value)


def test_bad_sample_dp_values_name_the_strategy_and_the_field():
    with pytest.raises(ConfigError, match=r"strategy 'fedavg' sample_dp: 'clip_norm'"):
        build_strategy("fedavg", {"sample_dp": {"epsilon": 1.0, "clip_norm": -1}})
    with pytest.raises(ConfigError, match="found neither"):
        build_strategy("fedavg", {"sample_dp": {}})
