"""A deployed study's folder holds what a simulated study writes, with the same numbers.

The coordinator driver (run store, audit log, result files) and the site machines run in
one process here, messages passed through in-memory links, so each test takes seconds;
tests/e2e/test_deploy_results.py does the same across real processes over gRPC.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedcare.cli.deploy import initial_model, plan_and_facts, study_from_config
from fedcare.cli.main import app
from fedcare.core.errors import ConfigError
from fedcare.data.registry import load_dataset
from fedcare.net.coordinator_server import Security, new_run
from fedcare.net.site_training import site_training
from fedcare.net.store import RunStore
from fedcare.net.table_site import TableSiteMachine
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.messages import UpdateMessage, parse_message
from fedcare.runtime.site import DataCheck, SiteMachine
from fedcare.study.config import parse_config
from fedcare.study.deployed import write_deployed_study
from fedcare.study.runner import StudyRunner
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv

HEART = {
    "name": "heart-deployed",
    "dataset": {"name": "heart-disease"},
    "model": {"name": "logistic"},
    "seeds": [0],
    "rounds": 2,
    "local": {"optimizer": "sgd", "lr": 0.02, "batch_size": 16},
    "baselines": [],
    "strategies": [{"name": "fedavg"}],
}


class QueueLink:
    """What the driver needs of a gRPC link: messages for one site go into a shared queue."""

    def __init__(self, identity: str, queue: deque) -> None:
        self.identity, self.queue = identity, queue

    def send(self, env) -> None:
        self.queue.append((self.identity, env))

    def close(self) -> None:
        pass


def deploy(folder: Path, config, machines: dict, *, run_id="run-1", options=None, meddle=None):
    """Run one deployed run in this process; ``meddle(site, env) -> env | None`` may drop or
    alter what a site sends (None: lost). Deadlines pass on every idle tick."""
    plan, chosen, facts = plan_and_facts(config, None, None, None, None)
    about = {
        "config": config.model_dump(mode="json"),
        "label": chosen.display_name,
        "dataset": facts,
    }
    driver = new_run(
        folder,
        run_id,
        plan,
        initial_model(plan),
        Security(None),
        options,
        log=lambda _: None,
        study=about,
    )
    queue: deque = deque()
    links = {name: QueueLink(name, queue) for name in machines}

    def from_site(name: str, envs) -> None:
        for env in envs:
            env = meddle(name, env) if meddle else env
            if env is not None:
                driver.received(links[name], env.from_peer(name))

    for name, site in machines.items():
        driver.connected(links[name])
        from_site(name, site.start(time.monotonic()))
    for _ in range(10_000):
        if driver.finished.is_set():
            break
        if not queue:
            driver.tick()  # past every deadline (options with 0 s timeouts)
            continue
        name, env = queue.popleft()
        from_site(name, machines[name].handle(env.from_peer("coordinator"), time.monotonic()))
    driver.store.close()
    assert driver.finished.is_set(), "the run did not finish"
    return plan


def approvals(tmp_path: Path, name: str, plan_hash: str) -> ApprovalStore:
    store = ApprovalStore(tmp_path / "sites" / name / "approvals.json")
    store.approve(plan_hash, by="owner")
    return store


def heart_sites(tmp_path: Path, plan_hash: str) -> dict[str, SiteMachine]:
    heart = load_dataset("heart-disease")
    return {
        s.name: SiteMachine(
            s.name,
            approvals(tmp_path, s.name, plan_hash),
            DataCheck(True, {"num_train": s.num_train, "num_test": s.num_test}),
            site_training(s),
            coordinator="coordinator",
        )
        for s in heart.sites
    }


def strip_volatile(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("wall_time_s", "deployed_runs")}


def test_a_deployed_study_writes_the_simulators_files_with_the_simulators_numbers(tmp_path):
    config = parse_config(HEART)
    plan = plan_and_facts(config, None, None, None, None)[0]
    deploy(tmp_path / "deployed", config, heart_sites(tmp_path, plan.hash), run_id="heart-1")
    report = write_deployed_study(tmp_path / "deployed")
    # Permutation importance needs every site's test rows: the simulator's alone.
    StudyRunner(config.model_copy(update={"explain": False}), tmp_path / "simulated").run()

    deployed = json.loads((tmp_path / "deployed" / "metrics.json").read_text())
    simulated = json.loads((tmp_path / "simulated" / "metrics.json").read_text())
    assert set(deployed) == set(simulated) | {"deployment"}
    assert deployed["sites"] == simulated["sites"]
    assert deployed["study"]["seeds"] == [0] and deployed["study"]["rounds"] == 2
    (dep,), (sim,) = deployed["strategies"], simulated["strategies"]
    assert dep["deployed_runs"] == ["heart-1"]
    assert set(dep) == set(sim) | {"deployed_runs"}
    assert dep["hyperparameters"] == sim["hyperparameters"]
    assert dep["communication"] == sim["communication"]
    assert dep["curves"]["round"] == sim["curves"]["round"] == [1, 2]
    for site, stats in sim["per_site"].items():
        for metric, stat in stats.items():
            assert dep["per_site"][site][metric]["mean"] == pytest.approx(stat["mean"], abs=1e-5)
    for key, stat in sim["overall"].items():
        assert dep["overall"][key]["mean"] == pytest.approx(stat["mean"], abs=1e-5)

    model = tmp_path / "deployed" / "models" / "fedavg-seed0.safetensors"
    reference = load_file(str(tmp_path / "simulated" / "models" / "fedavg-seed0.safetensors"))
    tensors = load_file(str(model))
    assert tensors.keys() == reference.keys()
    for name in tensors:
        np.testing.assert_allclose(tensors[name], reference[name], atol=1e-6)

    html = report.read_text()
    assert report == tmp_path / "deployed" / "report.html"
    assert "Deployment" in html and "heart-1" in html
    assert "also holds sections not shown" not in html
    assert (tmp_path / "deployed" / "metrics.csv").is_file()
    assert (tmp_path / "deployed" / "config.yaml").is_file()

    # `fedcare coordinator status --report` rewrites the folder from the run store.
    report.unlink()
    result = CliRunner().invoke(
        app, ["coordinator", "status", "--out", str(tmp_path / "deployed"), "--report"]
    )
    assert result.exit_code == 0, result.output
    assert report.is_file() and "heart-1" in result.output


def test_rejected_updates_and_dropped_sites_are_recorded_round_by_round(tmp_path):
    config = parse_config(HEART | {"rounds": 3})
    plan = plan_and_facts(config, None, None, None, None)[0]

    def meddle(site, env):
        message = parse_message(env)
        if site == "va" and isinstance(message, UpdateMessage) and message.round == 0:
            return None  # va's first update never arrives: it misses the deadline
        if site == "switzerland" and isinstance(message, UpdateMessage) and message.round == 1:
            poisoned = message.delta.copy()
            poisoned[0] = np.nan  # refused by the coordinator's update checks
            return replace(message, delta=poisoned).to_envelope()
        return env

    options = CoordinatorOptions(round_timeout_s=0.0, eval_timeout_s=30.0)
    folder = tmp_path / "deployed"
    deploy(folder, config, heart_sites(tmp_path, plan.hash), options=options, meddle=meddle)
    write_deployed_study(folder)

    metrics = json.loads((folder / "metrics.json").read_text())
    (run,) = metrics["deployment"]["runs"]
    assert run["run_id"] == "run-1" and run["status"] == "finished"
    first, second, third = run["rounds"]
    assert first["dropped"] == {"va": "missed the round deadline"}
    assert "va" not in first["contributed"]
    assert list(second["rejected"]) == ["switzerland"]
    assert "finite" in second["rejected"]["switzerland"]
    assert sorted(third["contributed"]) == sorted(plan.sites)
    with RunStore.in_folder(folder) as store:
        for logged, stored in zip(run["rounds"], store.rounds("run-1"), strict=True):
            assert logged["contributed"] == stored.by_status("contributed")
            assert logged["round"] == stored.round + 1
            assert logged["pooled_accuracy"] == stored.metrics["pooled_metrics"]["accuracy"]
    history = metrics["strategies"][0]["communication"]["upload_bytes_per_round"]
    assert history[0] < history[2]  # three sites uploaded in round 1, four in round 3
    html = (folder / "report.html").read_text()
    assert "missed the round deadline" in html and "finite" in html


TABULAR_SITES = ("north", "south", "east")


def tabular_config(tmp_path: Path, **dataset) -> dict:
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA_DICT))
    files = {}
    for i, site in enumerate(TABULAR_SITES):
        files[site] = str(write_csv(tmp_path, site, site_frame(i, 80 + 20 * i)))
    params = {"schema": str(schema), "files": files, "normalise": "site", **dataset}
    return {
        "name": "own-tables",
        "dataset": {"name": "tabular", "params": params},
        "model": {"name": "logistic"},
        "seeds": [0],
        "rounds": 3,
        "local": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8},
        "baselines": [],
        "strategies": [{"name": "fedavg"}],
    }


def table_sites(tmp_path: Path, config, plan_hash: str, files: dict) -> dict:
    return {
        site: TableSiteMachine(
            site,
            approvals(tmp_path, site, plan_hash),
            Path(files[site]),
            site_training,
            log=lambda _: None,
            coordinator="coordinator",
        )
        for site in TABULAR_SITES
    }


def test_a_site_whose_table_has_a_bad_column_is_refused_and_the_coordinator_is_told(tmp_path):
    # Rounds start once the two good sites are ready (no grace period for the third).
    raw = tabular_config(tmp_path, test_fraction=0.25) | {"participation": {"min_sites": 2}}
    config = parse_config(raw)
    plan = plan_and_facts(config, None, None, None, None)[0]
    files = dict(config.dataset.params["files"])
    bad = tmp_path / "east-export.csv"
    site_frame(2, 120).rename(columns={"ward": "Ward "}).to_csv(bad, index=False)
    files["east"] = str(bad)
    machines = table_sites(tmp_path, config, plan.hash, files)
    deploy(tmp_path / "deployed", config, machines, options=CoordinatorOptions(start_grace_s=0.0))

    east = machines["east"]
    assert east.phase.value == "refused" and east.table_rows is None
    (problem,) = east.data.problems
    assert str(bad) in problem and "'ward'" in problem and "missing column" in problem
    with RunStore.in_folder(tmp_path / "deployed") as store:
        status = {s.site: s for s in store.sites("run-1")}
        assert status["east"].status == "data problem"
        assert str(bad) in status["east"].detail and "'ward'" in status["east"].detail
        assert all("east" in r.by_status("dropped") for r in store.rounds("run-1"))
    write_deployed_study(tmp_path / "deployed")
    metrics = json.loads((tmp_path / "deployed" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["sites"]] == ["north", "south"]
    (run,) = metrics["deployment"]["runs"]
    why = run["rounds"][-1]["dropped"]["east"]
    assert why.startswith("data failed its check: ") and "'ward'" in why
    assert [r["missing"] for r in run["short_rounds"]] == [{"east": why}] * 3


def test_a_simulated_studys_results_are_not_overwritten_by_deployed_ones(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 1, "strategies": []}))
    (tmp_path / "runs.db").touch()
    with pytest.raises(ConfigError, match="simulated study's results"):
        write_deployed_study(tmp_path)


def test_a_deployed_dp_run_reports_the_epsilon_its_coordinator_accounted(tmp_path):
    dp = {
        "name": "fedavg",
        "label": "dp",
        "params": {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}},
    }
    config = parse_config(HEART | {"strategies": [dp]})
    plan = plan_and_facts(config, None, None, None, None)[0]
    deploy(tmp_path / "deployed", config, heart_sites(tmp_path, plan.hash))
    write_deployed_study(tmp_path / "deployed")

    metrics = json.loads((tmp_path / "deployed" / "metrics.json").read_text())
    result = json.loads((tmp_path / "deployed" / "deploy" / "run-1" / "result.json").read_text())
    (entry,) = metrics["strategies"]
    assert entry["name"] == "dp" and entry["hyperparameters"]["privacy.dp"]
    epsilons = [r["epsilon"] for r in result["history"]]
    assert entry["privacy"]["epsilon_per_round"] == pytest.approx(epsilons)
    assert entry["privacy"]["epsilon"]["mean"] == pytest.approx(result["epsilon"])
    assert "ε spent" in (tmp_path / "deployed" / "report.html").read_text()


def test_a_site_whose_file_cannot_be_read_says_so_before_any_plan(tmp_path):
    site = TableSiteMachine(
        "north",
        ApprovalStore(tmp_path / "approvals.json"),
        tmp_path / "exports" / "north.csv",
        site_training,
        log=lambda _: None,
    )
    (hello,) = site.start(0.0)
    assert site.phase.value == "refused"
    assert hello.header["data_ok"] is False
    (problem,) = hello.header["problems"]
    assert "file not found" in problem and "exports/north.csv" in problem
    assert [e.kind for e in site.drain_events()] == ["data_invalid"]


def test_each_deployed_seed_splits_a_hospitals_table_as_the_simulator_does_for_that_seed(
    tmp_path,
):
    raw = tabular_config(tmp_path, test_fraction=0.25)
    del raw["dataset"]["params"]["normalise"]  # the default, per site, is what deploys
    config = parse_config(raw | {"seeds": [1, 2]})
    folder = tmp_path / "deployed"
    files = config.dataset.params["files"]
    for seed in (1, 2):
        one_seed = config.model_copy(update={"seeds": [seed]})
        plan = plan_and_facts(one_seed, None, None, None, None)[0]
        assert (plan.seed, plan.data["split"]["seed"]) == (seed, seed)
        deploy(
            folder, one_seed, table_sites(tmp_path, one_seed, plan.hash, files), run_id=f"s{seed}"
        )
    write_deployed_study(folder)
    StudyRunner(config.model_copy(update={"explain": False}), tmp_path / "simulated").run()

    deployed = json.loads((folder / "metrics.json").read_text())
    simulated = json.loads((tmp_path / "simulated" / "metrics.json").read_text())
    (dep,) = deployed["strategies"]  # the two seeds are one strategy
    assert dep["deployed_runs"] == ["s1", "s2"]
    assert deployed["study"]["split"] == simulated["study"]["split"]
    assert deployed["study"]["split"]["runs"] == [
        {"seed": 1, "split_seed": 1},
        {"seed": 2, "split_seed": 2},
    ]
    sim = next(s for s in simulated["strategies"] if s["name"] == "fedavg")
    for site, stats in sim["per_site"].items():
        values = dep["per_site"][site]["accuracy"]["values"]
        assert values == pytest.approx(stats["accuracy"]["values"], abs=1e-6)


def drive(driver, machines: dict) -> None:
    """One run of a study with the sites' machines as they are (they outlive the run)."""
    queue: deque = deque()
    links = {name: QueueLink(name, queue) for name in machines}

    def from_site(name: str, envs) -> None:
        for env in envs:
            driver.received(links[name], env.from_peer(name))

    for name, site in machines.items():
        driver.connected(links[name])
        from_site(name, site.start(time.monotonic()))
    for _ in range(10_000):
        if driver.finished.is_set():
            break
        if not queue:
            driver.tick()
            continue
        name, env = queue.popleft()
        from_site(name, machines[name].handle(env.from_peer("coordinator"), time.monotonic()))
    while queue:  # the last messages (RunFinished) reach the sites
        name, env = queue.popleft()
        machines[name].handle(env.from_peer("coordinator"), time.monotonic())
    driver.store.close()
    assert driver.finished.is_set(), "the run did not finish"


def test_a_deployed_study_summarises_each_strategy_over_its_seeds_like_the_simulator(tmp_path):
    config = parse_config(
        {
            **HEART,
            "seeds": [0, 1],
            "baselines": ["local"],
            "strategies": [{"name": "fedavg"}, {"name": "fedprox", "params": {"mu": 0.01}}],
        }
    )
    selection = study_from_config(config)
    machines = heart_sites(tmp_path, selection.plan.hash)  # each owner approves the study once
    about = {"config": config.model_dump(mode="json"), "dataset": selection.facts}
    about["not_deployed"] = list(selection.not_deployed)
    folder = tmp_path / "deployed"
    for i, plan in enumerate(selection.plan.runs):
        driver = new_run(
            folder, f"run-{i + 1}", plan, initial_model(plan), Security(None),
            log=lambda _: None, study={**about, "label": selection.labels[i]},
            study_plan=selection.plan,
        )  # fmt: skip
        drive(driver, machines)
        last = i == len(selection.plan.runs) - 1
        assert {m.phase.value for m in machines.values()} == {
            "finished" if last else "waiting_plan"
        }
    write_deployed_study(folder)
    simulated_config = config.model_copy(update={"explain": False, "baselines": []})
    StudyRunner(simulated_config, tmp_path / "simulated").run()

    deployed = json.loads((folder / "metrics.json").read_text())
    simulated = json.loads((tmp_path / "simulated" / "metrics.json").read_text())
    assert deployed["study"]["seeds"] == [0, 1]
    assert deployed["deployment"]["not_deployed"][0].startswith("baselines (local)")
    by_name = {s["name"]: s for s in deployed["strategies"]}
    assert by_name["fedavg"]["deployed_runs"] == ["run-1", "run-2"]
    assert by_name["fedprox"]["deployed_runs"] == ["run-3", "run-4"]
    for sim in simulated["strategies"]:
        dep = by_name[sim["name"]]
        for key, stat in sim["overall"].items():  # each seed's value, then mean ± std
            assert dep["overall"][key]["values"] == pytest.approx(stat["values"], abs=1e-5)
            assert dep["overall"][key]["std"] == pytest.approx(stat["std"], abs=1e-5)
