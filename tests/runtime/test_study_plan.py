"""A deployed study as one plan: every run (strategy x seed) in order, under one hash.

The data owner approves the study's hash once; each run is accepted because its own plan
hash is one of the study's runs, which the site computes itself.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.core.records import TrainSpec
from fedcare.runtime.approvals import ApprovalStore, plan_hash
from fedcare.runtime.rounds import RunPlan, StudyPlan

SITES = ("north", "south")


def run(strategy: str = "fedavg", seed: int = 0, **params: object) -> RunPlan:
    return RunPlan(
        sites=SITES,
        strategy=strategy,
        strategy_params=dict(params),
        spec=TrainSpec(lr=0.1, batch_size=4),
        rounds=3,
        seed=seed,
        input_shape=(5,),
        num_classes=2,
        study="two-by-two",
    )


def two_by_two() -> StudyPlan:
    runs = tuple(run(s, seed) for s in ("fedavg", "fedprox") for seed in (0, 1))
    return StudyPlan("two-by-two", runs, ("baselines local, pooled (simulation only)",))


def test_the_study_hash_covers_every_run_so_changing_any_run_changes_it() -> None:
    study = two_by_two()
    assert study.hash == plan_hash(study.to_dict())
    assert [r["seed"] for r in study.to_dict()["runs"]] == [0, 1, 0, 1]
    seen = {study.hash}
    for i, original in enumerate(study.runs):
        for changed in (replace(original, rounds=4), replace(original, seed=9)):
            runs = (*study.runs[:i], changed, *study.runs[i + 1 :])
            seen.add(StudyPlan(study.study, runs, study.not_deployed).hash)
    assert len(seen) == 1 + 2 * len(study.runs)  # every change, a different hash
    reordered = StudyPlan(study.study, study.runs[::-1], study.not_deployed)
    assert reordered.hash != study.hash  # the order the runs take is approved too
    assert StudyPlan(study.study, study.runs).hash != study.hash  # and what is left out


def test_a_study_plan_round_trips_and_knows_each_runs_place() -> None:
    study = two_by_two()
    again = StudyPlan.from_dict(study.to_dict())
    assert again == study and again.hash == study.hash
    assert study.position(study.runs[2].hash) == 2
    assert study.after(study.runs[2].hash) == study.runs[3:]
    with pytest.raises(ConfigError, match="not one of the 4 runs of study 'two-by-two'"):
        study.position(run("fedavg", 5).hash)


def test_a_study_refuses_the_same_run_twice_and_runs_on_different_sites() -> None:
    with pytest.raises(ConfigError, match="runs 1 and 2 are the same plan"):
        StudyPlan("s", (run(), run()))
    with pytest.raises(ConfigError, match="run 2 names sites"):
        StudyPlan("s", (run(), replace(run(seed=1), sites=("north",))))
    with pytest.raises(ConfigError, match="lists no runs"):
        StudyPlan("s", ())


def test_a_malformed_run_in_a_received_study_names_the_run() -> None:
    raw = two_by_two().to_dict()
    raw["runs"][1] = {**raw["runs"][1], "rounds": 0}
    with pytest.raises(ConfigError, match=r"study plan: run 2: .*'rounds' must be >= 1"):
        StudyPlan.from_dict(raw)


def test_approving_a_study_once_approves_each_of_its_runs_and_nothing_else(tmp_path) -> None:
    store = ApprovalStore(tmp_path / "approvals.json")
    study = two_by_two()
    raw = study.to_dict()
    first = study.runs[0].to_dict()
    waiting = store.request_member(first, raw, from_="coordinator")
    assert not waiting.approved
    assert f"fedcare site approve {study.hash}" in waiting.reason
    assert list(store.pending()) == [study.hash]  # the owner reviews the whole study
    store.approve(study.hash, by="dr. owner")
    for r in study.runs:
        decision = store.decide_member(r.to_dict(), raw)
        assert decision.approved and "dr. owner" in decision.reason
        assert decision.plan_hash == r.hash
    assert not store.decide(run("fedavg", 5).hash).approved  # a run outside the study is not
    with pytest.raises(ProtocolError, match="is not one of the 4 runs"):
        store.decide_member(run("fedavg", 5).to_dict(), raw)


def test_allow_rules_still_apply_to_each_run_of_a_study(tmp_path) -> None:
    store = ApprovalStore(tmp_path / "approvals.json")
    study = two_by_two()
    store.allow("strategy.name=fedavg", by="owner")
    decisions = [store.decide_member(r.to_dict(), study.to_dict()) for r in study.runs]
    assert [d.approved for d in decisions] == [True, True, False, False]
