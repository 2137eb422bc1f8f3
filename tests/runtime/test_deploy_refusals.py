"""What the deployed runtime refuses follows from what a strategy declares, not its name."""

from __future__ import annotations

import pytest

from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.runtime.rounds import RunPlan


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


def test_a_personal_pass_that_collects_every_sites_model_is_refused_naming_the_strategy():
    with pytest.raises(ConfigError, match="'mocha' needs every site's model at the coordinator"):
        plan("mocha").build_strategy()


def test_a_personal_pass_kept_at_the_site_deploys():
    assert plan("ditto").build_strategy().personal.personal_pass is not None
