"""Same results (issue 12): every benchmark's final model, recorded once and compared after.

A refactor of the round must not change any model. This script runs each benchmark of
benchmarks/README.md that trains a model, with that benchmark's own workload and settings
(imported from its script where it defines them), plus the embedded heart study under
every kind of strategy, simulated, and a deployed heart study (a coordinator and four
site processes over loopback with mutual TLS); it keeps each final model's parameters.

    # the reference, from the code before the change (a worktree of the old commit):
    PYTHONPATH=/work/wt/baseline/src python benchmarks/same_models.py --record /work/refmodels \\
        --digests benchmarks/same_models_reference.json
    # after the change: full parameters (max abs difference per model, PASS at <= 1e-6) ...
    PYTHONPATH=src python benchmarks/same_models.py --compare /work/refmodels
    # ... or, without the reference files, the committed digests (bit-identical models):
    PYTHONPATH=src python benchmarks/same_models.py --compare benchmarks/same_models_reference.json
    python benchmarks/same_models.py --list            # the units and what each runs
    python benchmarks/same_models.py --compare DIR --only heart/ --only deployed

A unit is one run of fedcare (a study, a simulation, a deployment) and gives one or more
models, each named ``UNIT/MODEL``; ``--only`` selects units by prefix or glob. Seed 0 only;
runs longer than about a minute are cut in rounds (each unit's note says which).
Training uses ``--threads`` torch threads (1 by default, recorded in the manifest) so that
a record and a comparison run the same arithmetic.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import itertools
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

Tensors = dict[str, np.ndarray]
Models = dict[str, Tensors]  # model name within its unit -> named tensors

TOLERANCE = 1e-6
HEART_SITES = ("cleveland", "hungarian", "switzerland", "va")
HEART_LOCAL = {"optimizer": "sgd", "lr": 0.02, "epochs": 1, "batch_size": 16}
UPLOAD_BYTES = "__upload_bytes__"  # compression runs also keep what they uploaded


@dataclass(frozen=True)
class Unit:
    name: str
    note: str  # the workload, and any cut against the benchmark it comes from
    run: Callable[[], Models]
    # Models that are not bit-reproducible (CKKS encryption noise, a deployed coordinator's
    # secret DP noise seed), "*" for all: the digest table can only check them loosely.
    inexact: tuple[str, ...] = ()

    def exact(self, model: str) -> bool:
        return "*" not in self.inexact and model not in self.inexact


# --------------------------------------------------------------------------- simulations


def simulate(
    dataset: Any,
    model: tuple[str, Mapping[str, Any]],
    strategy: str,
    params: Mapping[str, Any],
    spec: Any,
    rounds: int,
    **options: Any,
) -> Any:
    """One FederatedSimulation, built as the benchmark scripts build theirs."""
    from fedcare.algorithms.registry import build_strategy
    from fedcare.models import build_model
    from fedcare.sim.engine import FederatedSimulation

    module = build_model(model[0], dataset.input_shape, dataset.num_classes, **model[1])
    return FederatedSimulation(
        module=module,
        dataset=dataset,
        strategy=build_strategy(strategy, dict(params)),
        spec=spec,
        rounds=rounds,
        seed=0,
        eval_every=0,
        **options,
    ).run()


def final(result: Any, sites: Iterable[str] | None = None) -> Tensors:
    """A run's final model: ``params``, or one ``site:NAME`` vector per personalised site."""
    params = result.final_params
    if len(params) == 1:
        return {"params": np.asarray(params[0])}
    names = list(sites) if sites is not None else [str(i) for i in range(len(params))]
    return {f"site:{s}": np.asarray(p) for s, p in zip(names, params, strict=True)}


def study_models(raw: dict[str, Any]) -> Models:
    """A study config through StudyRunner (as ``fedcare simulate``); the models it saved."""
    from fedcare.study.config import parse_config
    from fedcare.study.runner import StudyRunner

    config = parse_config({**raw, "explain": False, "seeds": [0]}, source="same_models")
    with tempfile.TemporaryDirectory() as tmp:
        StudyRunner(config, Path(tmp)).run()
        files = sorted((Path(tmp) / "models").glob("*.safetensors"))
        return {f.stem.removesuffix("-seed0"): dict(load_file(str(f))) for f in files}


def heart_study(name: str, strategies: list[dict[str, Any]], **extra: Any) -> Models:
    return study_models(
        {
            "name": name,
            "dataset": {"name": "heart-disease"},
            "model": {"name": "logistic"},
            "rounds": 30,
            "local": HEART_LOCAL,
            "baselines": [],
            "strategies": strategies,
            **extra,
        }
    )


def sim_speed(sites: int) -> Models:
    from _workload import make_workload
    from sim_speed import SPEC, as_dataset

    dataset = as_dataset(*make_workload(sites))
    result = simulate(
        dataset, ("mlp", {"hidden": (64, 64)}), "fedavg", {}, SPEC, 10, mode="batched"
    )
    return {"fedavg": final(result)}


def heart_preset() -> Models:
    from fedcare.study.presets import heart_demo_config

    raw = heart_demo_config(seeds=[0]).model_dump(mode="json")
    raw["baselines"] = ["local", "pooled"]  # majority has no model
    return study_models(raw)


def personalisation() -> Models:
    from fedcare.data.heart import load_heart_disease
    from fedcare.models import build_model
    from fedcare.sim.engine import IsolatedTraining
    from personalisation import LOGISTIC, METHODS, MLP, SPEC

    ds = load_heart_disease()
    out: Models = {}
    for model, pooled in itertools.product((LOGISTIC, MLP), (False, True)):
        result = IsolatedTraining(
            module=build_model(model[0], ds.input_shape, 2, **model[1]),
            dataset=ds,
            spec=SPEC,
            rounds=30,
            seed=0,
            pooled=pooled,
            eval_every=0,
        ).run()
        out[f"{'pooled' if pooled else 'local'} ({model[0]})"] = final(result, ds.site_names)
    for label, strategy, model, params in METHODS:
        out[label] = final(simulate(ds, model, strategy, params, SPEC, 30), ds.site_names)
    return out


def compression(setup_name: str, rounds: int) -> Models:
    from compression import SETUPS, VARIANTS

    setup = SETUPS[setup_name]
    dataset = setup["load"]()
    out: Models = {}
    for label, stages, extra in VARIANTS:
        params = {**setup["params"], **extra, "upload": stages}
        result = simulate(dataset, setup["model"], "fedavg", params, setup["spec"], rounds)
        out[label] = {**final(result), UPLOAD_BYTES: np.array([result.upload_bytes], np.int64)}
    return out


def robustness(attack_name: str, rounds: int) -> Models:
    from fedcare.data.medmnist import load_medmnist
    from robustness import ATTACKS, RULES, SPEC

    dataset = load_medmnist("breastmnist", num_sites=10, partition="iid", seed=0)
    attack = dict(ATTACKS)[attack_name]
    return {
        rule: final(
            simulate(dataset, ("cnn", {"width": 16}), "fedavg", params, SPEC, rounds, attack=attack)
        )
        for rule, params in RULES
    }


def shapley() -> Models:
    """Every coalition's model, trained as benchmarks/shapley.py's utility trains it."""
    from fedcare.core.seeds import SeedStream
    from fedcare.data.base import FederatedDataset
    from fedcare.data.heart import load_heart_disease
    from fedcare.models import build_model
    from fedcare.sim.engine import initial_params
    from fedcare.study.config import LocalConfig

    dataset = load_heart_disease()
    spec = LocalConfig(**HEART_LOCAL).to_spec()  # type: ignore[arg-type]
    empty = build_model("logistic", dataset.input_shape, dataset.num_classes)
    out: Models = {"none": {"params": initial_params(empty, SeedStream(0))}}
    for size in range(1, len(dataset.sites) + 1):
        for members in itertools.combinations(dataset.sites, size):
            subset = FederatedDataset(
                name=f"{dataset.name}[{','.join(sorted(s.name for s in members))}]",
                sites=list(members),
                task=dataset.task,
                num_classes=dataset.num_classes,
                input_shape=dataset.input_shape,
            )
            label = "+".join(s.name for s in members)
            result = simulate(
                subset, ("logistic", {}), "fedavg", {"weighting": "uniform"}, spec, 30
            )
            out[label] = final(result)
    return out


def privacy_heart(rounds: int) -> Models:
    from privacy_heart import strategies

    chosen = [
        s
        for s in strategies(0.5)
        if ("5 rounds" in s["label"]) == (rounds == 5) and "CKKS" not in s["label"]
    ]
    return heart_study("heart-privacy", chosen, rounds=rounds)


def privacy_heart_ckks() -> Models:
    from privacy_heart import strategies

    return heart_study("heart-privacy", [s for s in strategies(0.5) if "CKKS" in s["label"]])


def disk_full() -> Models:
    """The uninterrupted in-process deployment that disk_full.py resumes every stop against."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # its harness is in tests/
    from tests.net.test_storage_failures import Recorded

    with tempfile.TemporaryDirectory() as tmp:
        run = Recorded(Path(tmp) / "clean")
        run.run()
        return {"fedavg": {"params": run.model()}}


SECAGG = {"kind": "secure_aggregation", "value_range": 1.0}
DP = {"epsilon": 3.0, "delta": 1e-5, "clip_norm": 0.5}
HEART_EXTRA: dict[str, list[dict[str, Any]]] = {
    # Personalised on the embedded logistic model (FedPer and FedBN need layers to keep:
    # they run on MLPs under personalisation/).
    "personal": [
        {"name": "ditto", "params": {"ditto_lambda": 0.1, "weighting": "uniform"}},
        {"name": "mocha", "params": {"lambda1": 0.3, "lambda2": 0.01}},
        {"name": "scaffold", "label": "scaffold-finetune", "params": {"finetune_epochs": 10}},
        {"name": "fedavg", "label": "fedavg-finetune", "params": {"finetune_epochs": 3}},
    ],
    "dp": [
        {"name": "fedavg", "label": "central", "params": {"dp": DP}},
        {"name": "fedavg", "label": "central-pld", "params": {"dp": {**DP, "accountant": "pld"}}},
        {
            "name": "fedavg",
            "label": "central-z",
            "params": {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}},
        },
        {
            "name": "fedavg",
            "label": "central-adaptive",
            "params": {"dp": {**DP, "adaptive_clip": True}},
        },
        {"name": "fedadam", "label": "fedadam-central", "params": {"dp": DP, "server_lr": 0.03}},
        {"name": "fedavg", "label": "local", "params": {"dp": {**DP, "mode": "local"}}},
        {
            "name": "fedprox",
            "label": "fedprox-local",
            "params": {"dp": {**DP, "mode": "local"}, "mu": 1.0},
        },
        {
            "name": "fedavg",
            "label": "sample",
            "params": {"sample_dp": {"epsilon": 3.0, "delta": 1e-5, "clip_norm": 1.0}},
        },
        {
            "name": "scaffold",
            "label": "scaffold-sample",
            "params": {"sample_dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}},
        },
        {
            "name": "fedavg",
            "label": "sample+central",
            "params": {"sample_dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}, "dp": DP},
        },
    ],
    "secure": [
        {"name": "fedavg", "label": "secagg", "params": {"secure": SECAGG}},
        {
            "name": "fedavg",
            "label": "secagg-uniform-deg2",
            "params": {"secure": {**SECAGG, "degree": 2}, "weighting": "uniform"},
        },
        {"name": "fedprox", "label": "fedprox-secagg", "params": {"secure": SECAGG, "mu": 1.0}},
        {
            "name": "fedyogi",
            "label": "fedyogi-secagg",
            "params": {"secure": SECAGG, "server_lr": 0.03},
        },
        {
            "name": "fedavg",
            "label": "distributed-dp-secagg",
            "params": {
                "secure": {**SECAGG, "value_range": 2.0},
                "dp": {**DP, "mode": "distributed"},
            },
        },
        {
            "name": "fedavg",
            "label": "secagg-clip",
            "params": {"secure": SECAGG, "upload": [{"stage": "clip", "max_norm": 1.0}]},
        },
    ],
    "robust": [
        {"name": "fedavg", "label": "median", "params": {"aggregator": "median"}},
        {
            "name": "fedavg",
            "label": "trimmed-mean",
            "params": {"aggregator": "trimmed_mean", "aggregator_params": {"beta": 0.25}},
        },
        {
            "name": "fedavg",
            "label": "krum",
            "params": {"aggregator": "krum", "aggregator_params": {"f": 0}},
        },
        {
            "name": "fedavg",
            "label": "multi-krum",
            "params": {"aggregator": "multi_krum", "aggregator_params": {"f": 0, "m": 2}},
        },
        {
            "name": "fedavg",
            "label": "norm-bound",
            "params": {"aggregator": "norm_bound", "aggregator_params": {"max_norm": 0.1}},
        },
        {"name": "scaffold", "label": "scaffold-median", "params": {"aggregator": "median"}},
        {
            "name": "fedadam",
            "label": "fedadam-trimmed",
            "params": {
                "aggregator": "trimmed_mean",
                "aggregator_params": {"beta": 0.25},
                "server_lr": 0.03,
            },
        },
    ],
    "compression": [
        {
            "name": "fedavg",
            "label": "clip",
            "params": {"upload": [{"stage": "clip", "max_norm": 0.05}]},
        },
        {
            "name": "fedavg",
            "label": "quantize-8",
            "params": {"upload": [{"stage": "quantize", "bits": 8}]},
        },
        {
            "name": "fedavg",
            "label": "clip-quantize-4",
            "params": {
                "upload": [
                    {"stage": "clip", "max_norm": 0.1},
                    {"stage": "quantize", "bits": 4, "chunk_size": 4},
                ]
            },
        },
        {
            "name": "fedavg",
            "label": "topk-ef",
            "params": {"upload": [{"stage": "topk", "fraction": 0.2, "error_feedback": True}]},
        },
        {
            "name": "fedavg",
            "label": "topk",
            "params": {"upload": [{"stage": "topk", "fraction": 0.5}]},
        },
        {
            "name": "scaffold",
            "label": "scaffold-quantize",
            "params": {"upload": [{"stage": "quantize", "bits": 8}]},
        },
        {
            "name": "fedprox",
            "label": "fedprox-topk-ef",
            "params": {
                "upload": [{"stage": "topk", "fraction": 0.3, "error_feedback": True}],
                "mu": 0.1,
            },
        },
        {
            "name": "fedavg",
            "label": "dp-quantize",
            "params": {"upload": [{"stage": "quantize", "bits": 8}], "dp": DP},
        },
    ],
}
HEART_SAMPLING = [  # half the hospitals a round (seeded sampling), one each strategy kind
    {"name": "fedavg"},
    {"name": "scaffold"},
    {"name": "fedadam", "params": {"server_lr": 0.03, "weighting": "uniform"}},
    {"name": "qfedavg", "params": {"q": 5.0, "server_lr": 3.0}},
    {"name": "ditto", "params": {"ditto_lambda": 0.1}},
    {"name": "fedavg", "label": "central-dp", "params": {"dp": DP}},
]
HEART_ATTACKED = [  # one hospital of four sends sign-flipped updates
    {"name": "fedavg"},
    {"name": "fedavg", "label": "median", "params": {"aggregator": "median"}},
    {
        "name": "fedavg",
        "label": "krum",
        "params": {"aggregator": "krum", "aggregator_params": {"f": 0}},
    },
]


# --------------------------------------------------------------------------- deployment

DEPLOYED = [  # the deployed heart study: one coordinator, four site processes, mTLS
    {"name": "fedavg"},
    {"name": "fedprox", "params": {"mu": 1.0, "weighting": "uniform"}},
    {"name": "scaffold"},
    # The coordinator draws central DP noise from a secret seed (by design), so two deployed
    # runs never share their noise: a negligible multiplier keeps the run comparable while
    # exercising the clipping, the mean over the expected count and the accountant.
    {
        "name": "fedavg",
        "label": "fedavg-central-dp",
        "params": {"dp": {"noise_multiplier": 1e-9, "clip_norm": 0.5}},
    },
    {
        "name": "fedavg",
        "label": "fedavg-secagg",
        "params": {"weighting": "uniform", "secure": SECAGG},
    },
    # What the round core moves out of the drivers: Ditto's second pass, q-FedAvg's own
    # weight, an upload stage decoded at the coordinator.
    {"name": "ditto", "params": {"ditto_lambda": 0.1, "weighting": "uniform"}},
    {"name": "qfedavg", "params": {"q": 5.0, "server_lr": 3.0}},
    {
        "name": "fedavg",
        "label": "fedavg-quantize-8",
        "params": {"upload": [{"stage": "quantize", "bits": 8}]},
    },
]


def deployed_heart(rounds: int) -> Models:
    """``fedcare coordinator start`` + four ``fedcare site start`` processes, loopback mTLS.

    One study of every strategy in DEPLOYED (one approval per site, runs one after
    another); each run's final (global) model, and beside it how far it is from the
    simulator's.
    """
    from fedcare.cli.deploy import study_from_config
    from fedcare.net.tls import init_study_ca, issue_bundle
    from fedcare.runtime.approvals import ApprovalStore
    from fedcare.study.config import load_config

    study_yaml = json.dumps(
        {
            "name": "heart-same-models",
            "dataset": {"name": "heart-disease"},
            "model": {"name": "logistic"},
            "seeds": [0],
            "rounds": rounds,
            "local": HEART_LOCAL,
            "baselines": [],
            "explain": False,
            "strategies": DEPLOYED,
        }
    )  # JSON is YAML
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = init_study_ca(root / "ca", "heart-same-models")
        issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
        for site in HEART_SITES:
            issue_bundle(ca, site, root / site, "site")
        (root / "study.yaml").write_text(study_yaml)
        selection = study_from_config(load_config(root / "study.yaml"))
        left_out = [x for x in selection.not_deployed if x.startswith("strategy")]
        if left_out:  # a strategy that stopped deploying is a changed result, not a skip
            raise RuntimeError(f"deployed study: left out {left_out}")
        for site in HEART_SITES:
            ApprovalStore(root / "sites" / site / "approvals.json").approve(
                selection.plan.hash, "same_models"
            )
        run_ids = _serve(root, len(selection.plan.runs))
        out: Models = {}
        for run_id, label, plan in zip(run_ids, selection.labels, selection.plan.runs, strict=True):
            model = load_file(str(root / "out" / "deploy" / run_id / "model.safetensors"))
            out[label] = {"params": model["params"]}
            gap = float(np.abs(model["params"] - _simulated(plan)).max())
            print(f"    deployed {label}: max |deployed - simulated| = {gap:.2e}", flush=True)
        return out


def _serve(root: Path, runs: int) -> list[str]:
    """Run the deployment to its end; the run ids (``eq-1`` ... ``eq-n``)."""
    cli = [sys.executable, "-m", "fedcare.cli.main"]
    port_file = root / "port"
    log_path = root / "deploy.log"
    with open(log_path, "wb") as log:
        coordinator = subprocess.Popen(
            [
                *cli, "coordinator", "start", "--study", str(root / "study.yaml"),
                "--out", str(root / "out"), "--bundle", str(root / "coordinator"),
                "--ca", str(root / "ca"), "--address", "127.0.0.1:0",
                "--port-file", str(port_file), "--run-id", "eq", "--start-grace", "600",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs = [coordinator]
        try:
            while not port_file.exists() or not port_file.read_text():
                if coordinator.poll() is not None:
                    raise RuntimeError(f"coordinator stopped:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.05)
            port = port_file.read_text()
            for site in HEART_SITES:
                procs.append(
                    subprocess.Popen(
                        [
                            *cli,
                            "site",
                            "start",
                            "--coordinator",
                            f"127.0.0.1:{port}",
                            "--bundle",
                            str(root / site),
                            "--data",
                            f"heart-disease:{site}",
                            "--state",
                            str(root / "sites" / site),
                            "--threads",
                            "1",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            if coordinator.wait(timeout=900) != 0:
                raise RuntimeError(f"coordinator failed:\n{log_path.read_text()[-4000:]}")
            for proc in procs[1:]:
                proc.wait(timeout=120)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    if runs == 1:
        return ["eq"]
    return [f"eq-{i}" for i in range(1, runs + 1)]


def _simulated(plan: Any) -> np.ndarray:
    """The simulator's global model for a deployed run's plan (as tests/e2e/ do)."""
    from fedcare.algorithms.registry import build_strategy
    from fedcare.data.registry import load_dataset
    from fedcare.models.registry import build_model
    from fedcare.sim.engine import FederatedSimulation

    dataset = load_dataset("heart-disease")
    result = FederatedSimulation(
        module=build_model(plan.model, dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy(plan.strategy, plan.strategy_params),
        spec=plan.spec,
        rounds=plan.rounds,
        seed=plan.seed,
        participation=plan.participation,
    ).run()
    # A personalised run's final_params are the sites' own models; the global one is the state.
    return result.state.params if len(result.final_params) > 1 else result.final_params[0]


# --------------------------------------------------------------------------- the units


def units() -> list[Unit]:
    heart = "heart study (FLamby split, logistic, SGD lr 0.02 batch 16), 30 rounds"
    cnn = "BreastMNIST 10 IID sites, CNN width 16, Adam 1e-3, batch 16, 2 epochs"
    cut = "10 of 30 rounds (a unit of 30 takes ~2-4 min here)"
    out = [
        Unit(
            "sim_speed/100-sites",
            "sim_speed.py workload: 100 sites x 200 x 32, MLP 64-64, FedAvg, 10 rounds, batched",
            lambda: sim_speed(100),
        ),
        Unit(
            "sim_speed/1000-sites",
            "sim_speed.py large run: 1,000 sites, 10 rounds",
            lambda: sim_speed(1000),
        ),
        Unit(
            "heart_accuracy",
            f"heart_accuracy.py: the embedded study's 11 strategies + local and pooled baselines, {heart}",
            heart_preset,
        ),
        Unit(
            "personalisation",
            f"personalisation.py: 6 methods + local/pooled logistic and MLP 16, {heart.replace('logistic, ', '')}",
            personalisation,
        ),
        Unit(
            "compression/heart",
            "compression.py heart: MLP 32, SGD lr 0.02 batch 16, uniform, 30 rounds, 6 uploads",
            lambda: compression("heart", 30),
        ),
        Unit(
            "compression/breastmnist",
            f"compression.py breastmnist: {cnn}, 6 uploads, {cut}",
            lambda: compression("breastmnist", 10),
        ),
    ]
    out += [
        Unit(
            f"robustness/{attack.replace(' ', '-')}",
            f"robustness.py {attack}: {cnn}, 5 rules, {cut}",
            lambda a=attack: robustness(a, 10),
        )
        for attack in ("clean", "sign flip x1", "scale x10")
    ]
    out += [
        Unit(
            "shapley",
            f"shapley.py: the model of every coalition of the 4 hospitals (and the untrained one), FedAvg uniform, {heart}",
            shapley,
        ),
        Unit(
            "disk_full",
            "disk_full.py's in-process deployment (tests/net/test_coordinator_driver.py: driver, "
            "runs.db, audit.log, four heart sites in one process), FedAvg, 2 rounds",
            disk_full,
        ),
        Unit(
            "privacy_heart/30-rounds",
            f"privacy_heart.py: FedAvg, + SecAgg, central DP eps 1 and 3, distributed DP + SecAgg, {heart}",
            lambda: privacy_heart(30),
        ),
        Unit(
            "privacy_heart/5-rounds",
            "privacy_heart.py: central DP eps 1 and 3, 5 rounds x 6 local epochs",
            lambda: privacy_heart(5),
        ),
        Unit(
            "privacy_heart/ckks",
            f"privacy_heart.py: FedAvg + CKKS, {heart}; CKKS encryption noise is random, so within 1e-6 but not bit-identical",
            privacy_heart_ckks,
            inexact=("*",),
        ),
    ]
    out += [
        Unit(
            f"heart/{group}",
            f"embedded heart study, {group}: {', '.join(s.get('label', s['name']) for s in strategies)}; {heart}",
            lambda g=group, s=strategies: heart_study(f"heart-{g}", s),
        )
        for group, strategies in HEART_EXTRA.items()
    ]
    out += [
        Unit(
            "heart/sampling",
            f"embedded heart study, 2 of 4 hospitals a round: {', '.join(s.get('label', s['name']) for s in HEART_SAMPLING)}; {heart}",
            lambda: heart_study(
                "heart-sampling", HEART_SAMPLING, participation={"fraction": 0.5, "min_sites": 2}
            ),
        ),
        Unit(
            "heart/attacked",
            f"embedded heart study, 1 of 4 hospitals flips its update's sign: fedavg, median, krum; {heart}",
            lambda: heart_study(
                "heart-attacked",
                HEART_ATTACKED,
                attack={"kind": "sign_flip", "fraction": 0.25, "strength": 1.0},
            ),
        ),
        Unit(
            "deployed/heart",
            f"deployed (deploy_overhead.py's set-up): coordinator + 4 site processes, loopback mTLS; {', '.join(s.get('label', s['name']) for s in DEPLOYED)}; {heart}",
            lambda: deployed_heart(30),
            inexact=("fedavg-central-dp",),
        ),
    ]
    return out


def selected(all_units: list[Unit], patterns: list[str]) -> list[Unit]:
    if not patterns:
        return all_units
    chosen = [
        u
        for u in all_units
        if any(u.name.startswith(p) or fnmatch.fnmatch(u.name, p) for p in patterns)
    ]
    if not chosen:
        raise SystemExit(
            f"--only {patterns} matches no unit; units: {', '.join(u.name for u in all_units)}"
        )
    return chosen


# --------------------------------------------------------------------------- record / compare


def file_name(model: str) -> str:
    """A flat, readable file name for ``UNIT/MODEL``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.replace("/", "__"))
    return f"{safe}.safetensors"


def digest(tensors: Tensors) -> dict[str, Any]:
    """sha256 over names, dtypes, shapes and little-endian bytes; max, mean, max |x|."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        a = np.ascontiguousarray(tensors[key])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    values = np.concatenate(
        [np.ravel(v).astype(np.float64) for k, v in sorted(tensors.items()) if k != UPLOAD_BYTES]
    )
    return {
        "sha256": h.hexdigest(),
        "size": int(values.size),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "abs_max": float(np.abs(values).max()),
    }


def max_difference(ref: Tensors, now: Tensors) -> tuple[float, str]:
    """(max abs difference over all tensors, what differs in structure or '')."""
    if sorted(ref) != sorted(now):
        return float("inf"), f"tensors {sorted(now)} != reference {sorted(ref)}"
    worst = 0.0
    for key in ref:
        if ref[key].shape != now[key].shape:
            return float("inf"), f"{key}: shape {now[key].shape} != reference {ref[key].shape}"
        if ref[key].size:
            gap = np.abs(ref[key].astype(np.float64) - now[key].astype(np.float64)).max()
            worst = max(worst, float(gap))
    return worst, ""


def code_info() -> dict[str, Any]:
    import torch

    import fedcare

    src = Path(fedcare.__file__).resolve().parent
    commit = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "fedcare": str(src),
        "commit": commit,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


class Recorder:
    def __init__(self, directory: Path, digests: Path | None) -> None:
        self.directory, self.digests = directory, digests
        directory.mkdir(parents=True, exist_ok=True)
        manifest = directory / "manifest.json"
        self.manifest: dict[str, Any] = (
            json.loads(manifest.read_text()) if manifest.exists() else {"models": {}}
        )

    def unit(self, unit: Unit, models: Models, seconds: float) -> bool:
        for name, tensors in models.items():
            full = f"{unit.name}/{name}"
            save_file(
                {k: np.ascontiguousarray(v) for k, v in tensors.items()},
                str(self.directory / file_name(full)),
            )
            self.manifest["models"][full] = {
                "unit": unit.name,
                "file": file_name(full),
                "exact": unit.exact(name),
                **digest(tensors),
            }
            print(f"  {full:<62} recorded ({digest(tensors)['size']} values)")
        self.manifest.setdefault("units", {})[unit.name] = {
            "note": unit.note,
            "seconds": round(seconds, 1),
        }
        return True

    def failed(self, unit: Unit, error: str) -> bool:
        print(f"  {unit.name}: not recorded, the unit failed: {error}")
        return False

    def close(self) -> bool:
        self.manifest["code"] = code_info()
        self.manifest["tolerance"] = TOLERANCE
        (self.directory / "manifest.json").write_text(
            json.dumps(self.manifest, indent=1, sort_keys=True)
        )
        if self.digests is not None:
            table = {
                "about": "benchmarks/same_models.py --record: sha256 of each final model's "
                "parameters (names, dtypes, shapes, little-endian bytes) with max, mean and "
                "max |x|; 'exact': false where the model is not bit-reproducible",
                "code": self.manifest["code"],
                "models": {
                    k: {f: v[f] for f in ("sha256", "size", "max", "mean", "abs_max", "exact")}
                    for k, v in sorted(self.manifest["models"].items())
                },
            }
            self.digests.write_text(json.dumps(table, indent=1) + "\n")
        size = sum(f.stat().st_size for f in self.directory.iterdir())
        print(
            f"recorded {len(self.manifest['models'])} models in {self.directory} ({size / 1e6:.1f} MB)"
        )
        return True


class Comparer:
    """Against a recorded folder (full parameters) or a digest table (sha256)."""

    def __init__(self, reference: Path) -> None:
        self.reference = reference
        self.full = reference.is_dir()
        source = reference / "manifest.json" if self.full else reference
        if not source.exists():
            raise SystemExit(f"--compare {reference}: no {source.name} there")
        data = json.loads(source.read_text())
        self.expected: dict[str, Any] = data["models"]
        ref_threads = data.get("code", {}).get("threads")
        import torch

        if ref_threads is not None and ref_threads != torch.get_num_threads():
            print(
                f"note: the reference trained with {ref_threads} torch threads, this run with {torch.get_num_threads()}"
            )
        self.rows: list[tuple[str, str, str]] = []  # model, verdict, detail

    def unit(self, unit: Unit, models: Models, seconds: float) -> bool:
        ok = True
        expected = {k for k, v in self.expected.items() if v.get("unit") == unit.name}
        for name, tensors in models.items():
            full = f"{unit.name}/{name}"
            expected.discard(full)
            if full not in self.expected:
                self.rows.append((full, "FAIL", "not in the reference"))
                print(f"  {full:<62} FAIL  not in the reference")
                ok = False
                continue
            if self.full:
                ref = dict(load_file(str(self.reference / self.expected[full]["file"])))
                gap, what = max_difference(ref, tensors)
                passed = gap <= TOLERANCE
                detail = what or f"max |diff| {gap:.2e}"
            else:
                now, ref_digest = digest(tensors), self.expected[full]
                if now["sha256"] == ref_digest["sha256"]:
                    passed, detail = True, "bit-identical"
                elif not ref_digest.get("exact", True):
                    gaps = [abs(now[f] - ref_digest[f]) for f in ("max", "mean", "abs_max")]
                    passed = max(gaps) <= TOLERANCE
                    detail = f"not bit-reproducible; max/mean/max|x| within {max(gaps):.2e}"
                else:
                    passed = False
                    detail = (
                        f"digest differs (mean {now['mean']:.9g} vs {ref_digest['mean']:.9g}); "
                        "compare against the recorded folder for the max |diff|"
                    )
            self.rows.append((full, "PASS" if passed else "FAIL", detail))
            print(f"  {full:<62} {'PASS' if passed else 'FAIL'}  {detail}", flush=True)
            ok &= passed
        for missing in sorted(expected):
            self.rows.append((missing, "FAIL", "in the reference, not produced now"))
            print(f"  {missing:<62} FAIL  in the reference, not produced now")
            ok = False
        return ok

    def failed(self, unit: Unit, error: str) -> bool:
        models = sorted(k for k, v in self.expected.items() if v.get("unit") == unit.name)
        for model in models or [unit.name]:
            self.rows.append((model, "FAIL", f"the unit failed: {error}"))
            print(f"  {model:<62} FAIL  the unit failed")
        return False

    def close(self) -> bool:
        failed = [r for r in self.rows if r[1] != "PASS"]
        how = (
            f"max abs difference <= {TOLERANCE:g}"
            if self.full
            else f"bit-identical digests; models marked inexact within {TOLERANCE:g} on max, "
            "mean and max |x|"
        )
        print(
            f"\n{len(self.rows) - len(failed)}/{len(self.rows)} models the same ({how}) "
            f"-> {'PASS' if not failed else 'FAIL'}"
        )
        for model, _, detail in failed:
            print(f"  FAIL {model}: {detail}")
        return not failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="DIR", help="write the reference models")
    mode.add_argument(
        "--compare",
        type=Path,
        metavar="DIR|FILE",
        help="compare with a recorded folder, or with a digest table (.json)",
    )
    mode.add_argument("--list", action="store_true", help="list the units and exit")
    parser.add_argument(
        "--digests",
        type=Path,
        metavar="FILE",
        help="with --record: also write the compact digest table (commit it)",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="UNIT", help="unit prefix or glob; repeat"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    chosen = selected(units(), args.only)
    if args.list:
        for u in chosen:
            print(f"{u.name:<26} {u.note}")
        return
    if args.digests and not args.record:
        parser.error("--digests goes with --record")
    import torch

    torch.set_num_threads(args.threads)
    # dp-accounting's RDP orders that do not converge are reported once per order and round.
    logging.getLogger("absl").setLevel(logging.ERROR)
    sink: Recorder | Comparer = (
        Recorder(args.record, args.digests) if args.record else Comparer(args.compare)
    )
    print(
        f"fedcare from {code_info()['fedcare']}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    ok = True
    started = time.perf_counter()
    for unit in chosen:
        print(f"{unit.name}: {unit.note}", flush=True)
        began = time.perf_counter()
        try:
            models = unit.run()
        except Exception as exc:  # one broken unit must not hide the others' verdicts
            traceback.print_exc()
            ok &= sink.failed(unit, f"{type(exc).__name__}: {exc}")
            continue
        seconds = time.perf_counter() - began
        ok &= sink.unit(unit, models, seconds)
        print(f"  ({seconds:.0f} s)", flush=True)
    ok &= sink.close()
    print(f"total {time.perf_counter() - started:.0f} s")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
