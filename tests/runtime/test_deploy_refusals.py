"""What the deployed runtime refuses follows from what a strategy declares, not its name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedcare.algorithms.registry import build_strategy
from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.privacy.spec import parse_dp
from fedcare.runtime import rounds
from fedcare.runtime.rounds import RunPlan
from fedcare.transforms.secure import parse_secure


def plan(strategy: str) -> RunPlan:
    return RunPlan(
        sites=("north", "south"),
        strategy=strategy,
        spec=TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8),
        rounds=2,
        seed=0,
        input_shape=(5,),
        num_classes=2,
    )


def plan_with(strategy: str, params: dict[str, object]) -> RunPlan:
    return replace(plan(strategy), strategy_params=params)


def test_a_personal_pass_that_collects_every_sites_model_deploys():
    personal = plan("mocha").build_strategy().personal.personal_pass
    assert personal is not None and personal.collects


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        ({"secure": {"kind": "secure_aggregation"}}, "SecAgg does not apply to mocha"),
        ({"secure": {"kind": "encrypt"}}, "CKKS encryption does not apply to mocha"),
        ({"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}}, "differential privacy"),
    ],
    ids=["secagg", "ckks", "dp"],
)
def test_a_collecting_pass_still_refuses_secure_sums_and_dp_saying_why(params, refused):
    with pytest.raises(ConfigError, match=refused) as caught:
        plan_with("mocha", params).build_strategy()
    assert "the coordinator needs every site's model" in str(caught.value)


def test_a_personal_pass_kept_at_the_site_deploys():
    assert plan("ditto").build_strategy().personal.personal_pass is not None


@pytest.mark.parametrize("added", ["secure", "dp"])
def test_any_collecting_pass_is_refused_under_a_secure_sum_or_dp_even_if_its_spec_allows_it(
    monkeypatch: pytest.MonkeyPatch, added: str
) -> None:
    """A plug-in whose spec forgets MOCHA's refusal still cannot deploy that way."""
    extra = {
        "secure": parse_secure("secure_aggregation"),
        "dp": parse_dp({"noise_multiplier": 1.0, "clip_norm": 0.5}),
    }[added]
    forgetful = replace(build_strategy("mocha"), **{added: extra})
    monkeypatch.setattr(rounds, "build_strategy", lambda name, params: forgetful)
    with pytest.raises(ConfigError, match="sends each site's own model to the coordinator"):
        plan("mocha").build_strategy()
