"""A plan's model by import path: the site imports only what its owner allowed.

The allow-list is checked on the plan's text before anything is imported; an approval of
the plan does not bypass it. The module below writes a marker file when imported, so each
test sees whether its code ran.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalOutcome, TrainSpec
from fedcare.models.registry import build_model
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.messages import ApprovalStatus, ErrorReport, JobPlan, parse_message
from fedcare.runtime.model_allow import (
    MODEL_NOT_ALLOWED,
    ModelAllowList,
    import_module_of,
    plan_models,
)
from fedcare.runtime.rounds import RunPlan, StudyPlan
from fedcare.runtime.site import DataCheck, SiteMachine, SitePhase

SITES = ("north", "south")


class BuiltWork:
    """What a real site builds first: the plan's model (fedcare.net.site_training does the
    same through build_model), so an allowed import path really is imported."""

    def __init__(self, plan: RunPlan) -> None:
        module = build_model(plan.model, plan.input_shape, plan.num_classes)
        self.num_params = sum(p.numel() for p in module.parameters())

    def train(self, task):  # pragma: no cover - these tests stop before training
        return LocalOutcome(task.start, num_samples=1, num_steps=1, train_loss=0.0)

    def evaluate(self, params):  # pragma: no cover
        return EvalStats.from_predictions(np.array([0.5]), np.array([1]), np.ones(1), 2)

    def local_mask(self, kind):  # pragma: no cover
        return np.zeros(self.num_params, dtype=bool)


@pytest.fixture
def untrusted(tmp_path, monkeypatch) -> tuple[str, Path]:
    """(import path of a model whose module has an import side effect, its marker file)."""
    name = f"hospital_untrusted_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.marker"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from fedcare.models.logistic import LogisticRegression as Net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield f"{name}:Net", marker
    sys.modules.pop(name, None)


def plan(model: str) -> RunPlan:
    return RunPlan(
        sites=SITES,
        strategy="fedavg",
        spec=TrainSpec(lr=0.1, batch_size=4),
        rounds=2,
        seed=0,
        input_shape=(5,),
        num_classes=2,
        model=model,
    )


def offer(p: RunPlan, study: StudyPlan | None = None):
    message = JobPlan(
        "run-1",
        0,
        p.to_dict(),
        p.hash,
        study=study.to_dict() if study else None,
        study_hash=study.hash if study else None,
    )
    return message.to_envelope().from_peer("coordinator")


def site(state: Path, allow: ModelAllowList | None) -> SiteMachine:
    machine = SiteMachine(
        "north",
        ApprovalStore(state / "approvals.json"),
        DataCheck(True, {"num_train": 10}),
        BuiltWork,
        coordinator="coordinator",
        models=allow,
    )
    machine.start(0.0)
    return machine


def test_a_model_off_the_allow_list_is_refused_and_its_module_never_imported(tmp_path, untrusted):
    model, marker = untrusted
    module = model.partition(":")[0]
    allow = ModelAllowList.in_folder(tmp_path / "state")
    p = plan(model)
    ApprovalStore(tmp_path / "state" / "approvals.json").approve(p.hash, by="owner")
    machine = site(tmp_path / "state", allow)

    [answer] = [parse_message(e) for e in machine.handle(offer(p), 0.0)]

    assert isinstance(answer, ErrorReport) and answer.code == MODEL_NOT_ALLOWED
    assert f"would import module '{module}'" in answer.message
    assert str(allow.path) in answer.message  # the list, and how to add to it
    assert f"fedcare site allow-model {model} --state {tmp_path / 'state'}" in answer.message
    assert module not in sys.modules and not marker.exists()  # approved, yet never imported
    assert machine.phase is SitePhase.WAITING_PLAN
    assert [e.kind for e in machine.drain_events()] == ["model_refused"]


def test_once_allowed_the_plan_shows_the_module_it_imports_and_builds(tmp_path, untrusted):
    model, marker = untrusted
    module = model.partition(":")[0]
    allow = ModelAllowList.in_folder(tmp_path / "state")
    allow.allow(model, by="Dr. Owner")
    p = plan(model)
    machine = site(tmp_path / "state", allow)

    [waiting] = [parse_message(e) for e in machine.handle(offer(p), 0.0)]

    assert isinstance(waiting, ApprovalStatus) and not waiting.approved
    [event] = [e for e in machine.drain_events() if e.kind == "waiting_approval"]
    assert event.detail["models"] == [
        f"model '{model}': this site would import module '{module}' (allowed by Dr. Owner)"
    ]
    assert not marker.exists()  # shown for approval: still nothing imported
    ApprovalStore(tmp_path / "state" / "approvals.json").approve(p.hash, by="owner")
    [approved] = [parse_message(e) for e in machine.tick(1.0)]
    assert isinstance(approved, ApprovalStatus) and approved.approved
    assert marker.read_text() == "imported"


def test_a_model_removed_from_the_list_while_its_plan_waits_is_refused_at_approval(
    tmp_path, untrusted
):
    model, marker = untrusted
    allow = ModelAllowList.in_folder(tmp_path / "state")
    allow.allow(model, by="owner")
    p = plan(model)
    machine = site(tmp_path / "state", allow)
    machine.handle(offer(p), 0.0)
    assert allow.disallow(model)
    ApprovalStore(tmp_path / "state" / "approvals.json").approve(p.hash, by="owner")

    [answer] = [parse_message(e) for e in machine.tick(1.0)]

    assert isinstance(answer, ErrorReport) and answer.code == MODEL_NOT_ALLOWED
    assert not marker.exists()


def test_every_run_of_a_study_is_checked_before_its_owner_is_asked(tmp_path, untrusted):
    model, marker = untrusted
    first, second = plan("logistic"), plan(model)
    study = StudyPlan("mixed", (first, second))
    machine = site(tmp_path / "state", ModelAllowList.in_folder(tmp_path / "state"))

    [answer] = [parse_message(e) for e in machine.handle(offer(first, study), 0.0)]

    assert isinstance(answer, ErrorReport) and answer.code == MODEL_NOT_ALLOWED
    assert ApprovalStore(tmp_path / "state" / "approvals.json").pending() == {}
    assert not marker.exists()


def test_built_in_models_need_no_entry_and_a_site_without_a_list_builds_only_them(
    tmp_path, untrusted
):
    model, marker = untrusted
    machine = site(tmp_path / "state", None)
    machine.handle(offer(plan("mlp")), 0.0)
    [event] = [e for e in machine.drain_events() if e.kind == "waiting_approval"]
    assert event.detail["models"] == ["model 'mlp' (built into fedcare)"]

    [answer] = [
        parse_message(e) for e in site(tmp_path / "s2", None).handle(offer(plan(model)), 0.0)
    ]
    assert isinstance(answer, ErrorReport) and answer.code == MODEL_NOT_ALLOWED
    assert "keeps no model allow-list" in answer.message and not marker.exists()


def test_import_paths_are_parsed_from_text_and_malformed_ones_refused():
    assert import_module_of("logistic") is None
    assert import_module_of("hospital.models:Net") == "hospital.models"
    for bad in ("os:system()", "../evil:Net", "a.b:", ":Net", "a b:Net", "a.b:Net.sub"):
        with pytest.raises(ConfigError, match=r"package\.module:ClassName"):
            import_module_of(bad)
    again = replace(plan("logistic"), seed=1)
    study = StudyPlan("s", (plan("logistic"), plan("a.b:Net"), again))
    assert plan_models(study.to_dict()) == ["logistic", "a.b:Net"]


def test_the_allow_list_refuses_built_in_names_and_a_broken_file(tmp_path):
    allow = ModelAllowList.in_folder(tmp_path)
    with pytest.raises(ConfigError, match="built-in model name"):
        allow.allow("logistic", by="owner")
    allow.path.write_text('{"version": 1, "models": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(ConfigError, match=r"allowed-models.json', line 1: nested more than 64"):
        allow.check("a.b:Net")
    allow.path.write_text("[]")
    with pytest.raises(ConfigError, match="is not a version-1 fedcare allow-list"):
        allow.entries()


def test_the_coordinator_stops_waiting_for_a_site_that_refuses_the_models_code(tmp_path):
    from tests.conftest import make_sites
    from tests.runtime.test_protocol_study import deploy, heart_plan

    toy = make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)
    path = "fedcare.models.logistic:LogisticRegression"  # an import path all the same
    plan = heart_plan(toy, "fedavg", rounds=1, model=path)
    net = deploy(toy, plan, tmp_path)
    refuser, *others = toy.site_names
    for name in others:
        allow = ModelAllowList.in_folder(tmp_path / name)
        allow.allow(path, by=f"owner of {name}")
        net.sites[name].models = allow
    for name in net.sites:
        net.connect(name)
    net.run()
    for _ in range(3):  # past the start grace: rounds go on without the refusing site
        net.tick(120.0)
        net.run()
    assert net.coordinator.done
    refused = [e for e in net.coordinator.drain_events() if e.kind == "plan_refused"]
    assert [e.site for e in refused] == [refuser]
    assert refused[0].detail["reason"].startswith("model_not_allowed: model " + repr(path))
    assert all(refuser not in r["participants"] for r in net.coordinator.history)
