"""Data owners approve plans by hash, or by allow rule; approvals survive restarts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.runtime.approvals import ApprovalStore, canonical_json, plan_hash

PLAN = {
    "model": {"name": "logistic"},
    "strategy": {"name": "fedavg", "params": {}},
    "local": {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "batch_size": 8},
    "transforms": [{"name": "clip", "params": {"max_norm": 1.0}}],
    "code_hash": "3" * 64,
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_the_hash_does_not_depend_on_key_order(plan):
    reversed_plan = dict(reversed(list(plan.items())))
    assert plan_hash(plan) == plan_hash(reversed_plan)


def test_the_same_number_written_differently_hashes_the_same():
    a = {"local": {"lr": 1, "epochs": 2.0, "momentum": -0.0}, "sizes": (1, 2)}
    b = {"sizes": [1.0, 2], "local": {"momentum": 0, "epochs": 2, "lr": np.float64(1.0)}}
    assert plan_hash(a) == plan_hash(b)
    assert canonical_json({"lr": np.float32(0.5), "n": np.int64(3)}) == b'{"lr":0.5,"n":3}'


def test_any_change_to_the_plan_changes_the_hash():
    changed = {**PLAN, "local": {**PLAN["local"], "lr": 0.5}}
    assert plan_hash(changed) != plan_hash(PLAN)
    assert len(plan_hash(PLAN)) == 64


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"lr": float("nan")}, r"plan\.lr: nan is not a finite number"),
        ({"x": {1: "a"}}, "keys must be strings"),
        ({"x": [object()]}, r"plan\.x\[0\]: object cannot be part of a plan"),
    ],
)
def test_plans_that_are_not_plain_json_are_refused(plan, message):
    with pytest.raises(ConfigError, match=message):
        plan_hash(plan)


def test_an_unapproved_plan_waits_and_says_how_to_approve_it(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.json")
    decision = store.request(PLAN, from_="coordinator")
    assert not decision.approved
    assert f"fedcare site approve {plan_hash(PLAN)}" in decision.reason
    assert store.pending()[plan_hash(PLAN)]["plan"]["model"] == {"name": "logistic"}


def test_an_approval_persists_across_restarts_and_clears_the_pending_plan(tmp_path):
    path = tmp_path / "site" / "approvals.json"
    ApprovalStore(path).request(PLAN)
    ApprovalStore(path).approve(
        plan_hash(PLAN).upper(), by="dr.smith"
    )  # hashes are case-insensitive
    reopened = ApprovalStore(path)
    assert reopened.is_approved(plan_hash(PLAN))
    assert reopened.pending() == {}
    assert "approved by dr.smith" in reopened.decide(plan_hash(PLAN), PLAN).reason
    assert reopened.withdraw(plan_hash(PLAN))
    assert not ApprovalStore(path).is_approved(plan_hash(PLAN))


def test_an_allow_rule_approves_matching_plans_only(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.json")
    store.allow("model.name=logistic, strategy.name=fed*", by="dr.smith")
    assert store.request(PLAN).approved
    assert "allow rule" in store.decide(plan_hash(PLAN), PLAN).reason
    mlp = {**PLAN, "model": {"name": "mlp"}}
    assert not store.request(mlp).approved
    assert not store.is_approved(plan_hash(PLAN))  # rules need the plan itself
    assert store.disallow("strategy.name=fed*,model.name=logistic")  # same rule, any order
    assert not store.request(PLAN).approved


def test_a_rule_can_pin_the_code_version_and_match_numbers(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.json")
    store.allow(f"code_hash={'3' * 64},local.epochs=1", by="it-security")
    assert store.request(PLAN).approved
    assert not store.request({**PLAN, "code_hash": "4" * 64}).approved


def test_a_plan_that_does_not_match_its_announced_hash_is_refused(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.json")
    with pytest.raises(ProtocolError, match="does not match its hash"):
        store.decide("0" * 64, PLAN)


@pytest.mark.parametrize("bad", ["abc", "g" * 64, ""])
def test_malformed_hashes_are_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="64 hexadecimal characters"):
        ApprovalStore(tmp_path / "a.json").approve(bad, by="x")


@pytest.mark.parametrize("rule", ["model.name", "=x", "model.name=", "a=b,,c=d"])
def test_malformed_allow_rules_are_refused(tmp_path, rule):
    with pytest.raises(ConfigError, match=r"field\.path=pattern"):
        ApprovalStore(tmp_path / "a.json").allow(rule, by="x")


def test_a_corrupt_approval_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "approvals.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"approvals\.json' is not valid JSON"):
        ApprovalStore(path).is_approved("0" * 64)
