"""What ``fedcare coordinator start`` deploys of a study YAML: every strategy x seed it
lists as one study plan, and a named line for each part that only the simulator runs."""

from __future__ import annotations

import pytest

from fedcare.cli.deploy import study_from_config
from fedcare.core.errors import ConfigError
from fedcare.study.config import parse_config

STUDY = {
    "name": "everything",
    "dataset": {"name": "heart-disease"},
    "model": {"name": "logistic"},
    "seeds": [0, 1, 2],
    "rounds": 2,
    "baselines": ["local", "pooled"],
    "strategies": [
        {"name": "fedavg"},
        {"name": "fedprox", "params": {"mu": 0.01}},
        {"name": "cyclic"},
    ],
    "attack": {"kind": "sign_flip", "fraction": 0.25},
    "contributions": {"strategy": "fedavg", "method": "exact"},
    "epsilon_sweep": {
        "strategy": {"name": "fedavg", "label": "dp", "params": {"dp": {"clip_norm": 0.5}}},
        "epsilons": [1, 3],
    },
}


def test_every_deployable_strategy_runs_at_every_seed_in_one_study_plan() -> None:
    selection = study_from_config(parse_config(STUDY))
    runs = [(r.strategy, r.seed) for r in selection.plan.runs]
    assert runs == [(s, seed) for s in ("fedavg", "fedprox") for seed in (0, 1, 2)]
    assert selection.labels == ("fedavg",) * 3 + ("fedprox",) * 3
    assert all(r.study == "everything" for r in selection.plan.runs)


def test_each_part_that_cannot_deploy_is_named_with_why() -> None:
    left_out = study_from_config(parse_config(STUDY)).not_deployed
    named = [line.split(" ", 1)[0] for line in left_out]
    assert named == ["baselines", "attack", "contributions", "epsilon_sweep", "explain", "strategy"]
    assert "baselines (local, pooled)" in left_out[0]
    assert "strategy 'cyclic'" in left_out[-1]
    assert "passes the model from site to site" in left_out[-1]


def test_what_is_left_out_is_part_of_what_owners_approve() -> None:
    full = study_from_config(parse_config(STUDY)).plan
    fewer = study_from_config(parse_config({**STUDY, "attack": None})).plan
    assert full.runs == fewer.runs and full.hash != fewer.hash


def test_strategy_and_seed_options_select_a_subset_and_say_what_they_leave_out() -> None:
    selection = study_from_config(parse_config(STUDY), ["fedprox"], [2, 0])
    assert [(r.strategy, r.seed) for r in selection.plan.runs] == [("fedprox", 2), ("fedprox", 0)]
    assert "strategies not chosen with --strategy: fedavg, cyclic" in selection.not_deployed
    with pytest.raises(ConfigError, match="passes the model from site to site"):
        study_from_config(parse_config(STUDY), ["cyclic"])
    with pytest.raises(ConfigError, match="study has no strategy 'scaffold'"):
        study_from_config(parse_config(STUDY), ["scaffold"])


def test_a_study_of_which_nothing_can_deploy_is_refused_naming_why() -> None:
    with pytest.raises(ConfigError, match="none of its strategies can deploy: strategy 'cyclic'"):
        study_from_config(parse_config({**STUDY, "strategies": [{"name": "cyclic"}]}))


def test_a_survival_study_is_refused_for_deployment_pointing_to_the_simulator() -> None:
    # Deployed site agents train classification tasks; a Cox-loss study runs simulated.
    study = {
        "name": "brca",
        "dataset": {"name": "tcga-brca"},
        "model": {"name": "fedcare.models.cox:LinearRisk"},
        "rounds": 2,
        "strategies": [{"name": "fedavg"}],
    }
    with pytest.raises(ConfigError, match=r"survival training .* simulator only .*fedcare analyze"):
        study_from_config(parse_config(study))
