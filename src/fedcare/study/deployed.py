"""A deployed study's folder: the files a simulated study writes, from its finished runs.

Each deployed run is one strategy and one seed of a study config. This module reads the
run store (``runs.db``) and each run's ``deploy/RUN/`` files (plan, result with the final
evaluation counts, model), turns the finished runs into the simulator's per-seed results
and writes the study folder through the simulator's own writer: ``metrics.json`` (same
structure: per-round history, per-site final evaluation, privacy, bytes per site and round),
``metrics.csv``, ``report.html``, ``config.yaml`` and ``models/``. A ``deployment`` block marks
it as deployed: each run's id, status, and per round the sites sampled, those that
contributed, and those rejected or dropped with the reason; ``short_rounds`` lists the
rounds that ran with fewer contributors than sampled sites, each missing site with why.

Runs of the same strategy label and plan (seed aside) are the seeds of one strategy entry,
summarised over seeds (mean ± std) as the simulator does; for a seed run twice the later run
counts. A deployed study serves every strategy x seed it lists, so all of them land here;
what it could not deploy is listed under ``deployment.not_deployed``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats, eval_from_counts
from fedcare.data.tabular import RunSplit
from fedcare.ml.torch_adapter import layout_of
from fedcare.models.registry import build_model
from fedcare.net.run_files import read_plan_file, run_dir
from fedcare.net.store import RoundRecord as StoredRound
from fedcare.net.store import RunRecord, RunStore
from fedcare.runtime.rounds import RunPlan
from fedcare.sim.engine import RoundRecord, RunResult
from fedcare.study.config import StrategyConfig, StudyConfig, parse_config
from fedcare.study.runner import (
    DatasetFacts,
    hyperparameters,
    save_model,
    split_facts,
    study_metrics,
    write_study_folder,
)
from fedcare.study.summary import SeedRun, add_personalisation_gains, summarise_strategy

DEPLOYMENT_KEY = "deployment"


@dataclass(frozen=True)
class DeployedRun:
    """One finished run as the simulator would have returned it, with where it came from."""

    record: RunRecord
    plan: RunPlan
    label: str
    study: dict[str, Any]  # plan.json's "study" block: config, label, dataset facts
    result: RunResult
    wall_time_s: float

    @property
    def split(self) -> RunSplit | None:
        """The train/test split of a hospitals' own tables run (None: the dataset fixes it)."""
        split = self.plan.data.get("split") if self.plan.data else None
        if not isinstance(split, dict) or "source" not in split:
            return None
        return RunSplit(
            split["source"], None if split["source"] == "split column" else split["seed"]
        )

    @property
    def variant(self) -> str:
        """The plan without its seed (nor a split seed that follows it): runs that differ
        only in seed are one strategy."""
        plan = {k: v for k, v in self.plan.to_dict().items() if k != "seed"}
        if self.split is not None and self.split.follows_run:
            plan["data"] = {**plan["data"], "split": {**plan["data"]["split"], "seed": None}}
        text = json.dumps(plan, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _round_record(raw: dict[str, Any]) -> RoundRecord:
    """A round of the coordinator's history (JSON, nulls for NaN) as the simulator's record."""
    return RoundRecord(
        round=int(raw["round"]),
        participants=list(raw.get("participants", [])),
        train_loss=_number(raw.get("train_loss")),
        upload_bytes=int(raw.get("upload_bytes", 0)),
        download_bytes=int(raw.get("download_bytes", 0)),
        seconds=_number(raw.get("seconds")),
        site_metrics={
            site: {k: _number(v) for k, v in metrics.items()}
            for site, metrics in raw.get("site_metrics", {}).items()
        },
        pooled_metrics={k: _number(v) for k, v in raw.get("pooled_metrics", {}).items()},
        site_upload_bytes={k: int(v) for k, v in raw.get("site_upload_bytes", {}).items()},
        epsilon=None if raw.get("epsilon") is None else float(raw["epsilon"]),
        sample_epsilon=(
            None
            if raw.get("sample_epsilon") is None
            else {str(k): float(v) for k, v in raw["sample_epsilon"].items()}
        ),
    )


def _evals(raw: dict[str, Any], where: str) -> dict[str, EvalStats]:
    return {site: eval_from_counts(c, f"{where} '{site}'") for site, c in raw.items()}


def load_deployed_run(folder: Path, record: RunRecord) -> DeployedRun:
    """A finished run's result as the simulator's :class:`RunResult` (ConfigError if it lacks
    what metrics.json needs, naming the file)."""
    directory = run_dir(folder, record.run_id)
    plan_file = read_plan_file(folder, record.run_id)
    study = plan_file.get("study")
    if not isinstance(study, dict) or "config" not in study:
        raise ConfigError(
            f"{directory / 'plan.json'}: no 'study' block (the run was started by an older "
            "fedcare); its results stay in result.json only"
        )
    result_path = directory / "result.json"
    if not result_path.is_file():
        raise ConfigError(f"{result_path}: missing; the run did not write its result")
    result = json.loads(result_path.read_text())
    if "final_counts" not in result:
        raise ConfigError(f"{result_path}: no 'final_counts' (written by an older fedcare)")
    where = f"{result_path}: final_counts"
    final_params = load_file(str(directory / "model.safetensors"))["params"]
    run = RunResult(
        history=[_round_record(r) for r in result.get("history", [])],
        final_params=[np.asarray(final_params, dtype=np.float32)],
        final_eval=_evals(result["final_counts"], where),
        reference_evals={
            kind: _evals(evals, f"{result_path}: reference_counts '{kind}'")
            for kind, evals in result.get("reference_counts", {}).items()
        },
    )
    return DeployedRun(
        record=record,
        plan=RunPlan.from_dict(plan_file["plan"]),
        label=str(study.get("label") or plan_file["plan"]["strategy"]["name"]),
        study=study,
        result=run,
        wall_time_s=max(record.updated_at - record.created_at, 0.0),
    )


def _round_log(rounds: Sequence[StoredRound]) -> list[dict[str, Any]]:
    """Per round: sampled, contributed, rejected and dropped sites (with reasons)."""
    out = []
    for r in rounds:
        left_out = {
            status: {p.site: p.reason for p in r.participants if p.status == status}
            for status in ("rejected", "dropped")
        }
        pooled = r.metrics.get("pooled_metrics", {})
        out.append(
            {
                "round": r.round + 1,
                "status": r.status,
                "sampled": list(r.sites),
                "contributed": r.by_status("contributed"),
                **left_out,
                "pooled_accuracy": pooled.get("accuracy"),
            }
        )
    return out


def _run_block(store: RunStore, record: RunRecord, name: str | None, note: str) -> dict[str, Any]:
    plan = record.config.get("plan", {})
    rounds = store.rounds(record.run_id)
    block: dict[str, Any] = {
        "run_id": record.run_id,
        "strategy": name,
        "seed": plan.get("seed"),
        "status": record.status,
        "plan_hash": record.plan_hash,
        "rounds": _round_log(rounds),
        # Rounds with fewer contributors than sampled sites: which were missing and why.
        "short_rounds": [short for r in rounds if (short := r.short()) is not None],
        "sites": {
            s.site: {"status": s.status, "detail": s.detail} for s in store.sites(record.run_id)
        },
    }
    if note:
        block["note"] = note
    return block


def _site_facts(
    store: RunStore, runs: Sequence[DeployedRun], sites: Sequence[str]
) -> list[dict[str, Any]]:
    """Each site's train/test rows: from its Hello (counts only), else from the run itself
    (samples in its accepted updates, rows in its final evaluation)."""
    train: dict[str, int] = {}
    test: dict[str, int] = {}
    for run in runs:
        for ev in store.events(run.record.run_id, "site_hello"):
            data = ev.detail.get("data", {})
            if ev.site and "num_train" in data and "num_test" in data:
                train[ev.site], test[ev.site] = int(data["num_train"]), int(data["num_test"])
    for run in runs:
        for ev in store.events(run.record.run_id, "update_accepted"):
            if ev.site and "num_samples" in ev.detail:
                train.setdefault(ev.site, int(ev.detail["num_samples"]))
        for site, stats in run.result.final_eval.items():
            test.setdefault(site, stats.count)
    return [{"name": s, "num_train": train.get(s, 0), "num_test": test.get(s, 0)} for s in sites]


def _strategy_config(config: StudyConfig, run: DeployedRun) -> StrategyConfig:
    for s in config.all_strategies:
        if s.display_name == run.label:
            return s
    return StrategyConfig(name=run.plan.strategy, label=run.label, params=run.plan.strategy_params)


def _entry_names(groups: dict[tuple[str, str], list[DeployedRun]]) -> dict[tuple[str, str], str]:
    """The label; with the plan's short hash when one label ran under several plans."""
    labels = [label for label, _ in groups]
    return {
        (label, variant): label if labels.count(label) == 1 else f"{label} [{variant[:8]}]"
        for label, variant in groups
    }


def _model_layout(plan: RunPlan) -> Any:
    module = build_model(plan.model, plan.input_shape, plan.num_classes, **plan.model_params)
    return layout_of(module)


def deployed_metrics(folder: Path) -> tuple[dict[str, Any], StudyConfig] | None:
    """metrics.json of the folder's finished deployed runs (and the study config), writing
    each run's model to ``models/``; None when no run has finished."""
    folder = Path(folder)
    if not (folder / "runs.db").is_file():
        raise ConfigError(f"{folder / 'runs.db'}: no deployed runs in this folder")
    with RunStore.in_folder(folder) as store:
        loaded: list[DeployedRun] = []
        notes: dict[str, str] = {}
        for record in store.runs():
            if record.status != "finished":
                continue
            try:
                loaded.append(load_deployed_run(folder, record))
            except ConfigError as exc:
                notes[record.run_id] = f"not summarised: {exc}"
        groups: dict[tuple[str, str], dict[int, DeployedRun]] = {}
        for run in loaded:  # in creation order: a later run of the same seed replaces it
            groups.setdefault((run.label, run.variant), {})[run.plan.seed] = run
        if not groups:
            return None
        by_group = {k: sorted(v.values(), key=lambda r: r.plan.seed) for k, v in groups.items()}
        names = _entry_names(by_group)
        latest = loaded[-1]
        config = parse_config(latest.study["config"], source=f"run '{latest.record.run_id}' study")
        seeds = sorted({r.plan.seed for runs in by_group.values() for r in runs})
        # What ran: these seeds, no baselines (pooling rows is what deployment avoids), no
        # permutation importance (it would need a protocol step at every site).
        config = config.model_copy(
            update={
                "seeds": seeds,
                "rounds": latest.plan.rounds,
                "baselines": [],
                "explain": False,
            }
        )
        sites = [s for s in latest.plan.sites if any(s in r.result.final_eval for r in loaded)]
        entries = []
        counted: dict[str, str] = {}
        for key, runs in by_group.items():
            entries.append(_entry(folder, config, names[key], runs))
            counted.update({r.record.run_id: names[key] for r in runs})
        add_personalisation_gains(entries)
        dataset = dict(latest.study.get("dataset", {}))
        facts = DatasetFacts(
            name=latest.plan.dataset or str(dataset.get("name", "")),
            task="binary" if latest.plan.num_classes == 2 else "multiclass",
            sites=_site_facts(store, loaded, sites),
            description=str(dataset.get("description", "")),
            source=str(dataset.get("source", "")),
            split=split_facts(
                {r.plan.seed: r.split for runs in by_group.values() for r in runs if r.split}
            ),
        )
        wall = float(sum(r.wall_time_s for runs in by_group.values() for r in runs))
        metrics = study_metrics(config, facts, entries, wall)
        metrics[DEPLOYMENT_KEY] = {
            "runs": [
                _run_block(
                    store,
                    record,
                    counted.get(record.run_id),
                    notes.get(record.run_id)
                    or ("" if record.run_id in counted else "superseded by a later run"),
                )
                for record in store.runs()
            ],
            # What the study config lists but the deployment left out (the coordinator named
            # each part before the study started), so no reader takes it for an oversight.
            "not_deployed": [str(x) for x in latest.study.get("not_deployed", [])],
        }
    return metrics, config


def _entry(
    folder: Path, config: StudyConfig, name: str, runs: Sequence[DeployedRun]
) -> dict[str, Any]:
    """One strategy entry of metrics.json, and each seed's model in ``models/``."""
    first = runs[0]
    evaluated = [s for s in first.plan.sites if all(s in r.result.final_eval for r in runs)]
    strategy = _strategy_config(config, first)
    group_config = config.model_copy(update={"rounds": first.plan.rounds})
    for run in runs:
        save_model(
            folder,
            name,
            run.plan.seed,
            run.plan.model,
            run.plan.dataset,
            _model_layout(run.plan),
            run.result.final_params,
            list(run.plan.sites),
            metadata={"run_id": run.record.run_id, "plan_hash": run.record.plan_hash},
        )
    entry = summarise_strategy(
        name,
        "federated",
        name,
        hyperparameters(group_config, strategy),
        [SeedRun(r.plan.seed, r.result, r.wall_time_s) for r in runs],
        evaluated,
        None,
    )
    entry["deployed_runs"] = [r.record.run_id for r in runs]
    return entry


def refuse_simulated_folder(folder: Path) -> None:
    """ConfigError if ``folder`` holds a simulated study's results: a deployment would write
    its own over them. Checked before a deployment starts, and again before writing."""
    existing = Path(folder) / "metrics.json"
    if not existing.is_file():
        return
    try:
        previous = json.loads(existing.read_text())
    except json.JSONDecodeError:
        previous = {}
    if isinstance(previous, dict) and previous and DEPLOYMENT_KEY not in previous:
        raise ConfigError(
            f"{existing} holds a simulated study's results; a deployment does not write its "
            f"results over them: deploy into another folder (--out {folder}-deployed)"
        )


def write_deployed_study(folder: Path) -> Path | None:
    """Write the study folder from its finished deployed runs; the report's path, or None
    when no run has finished yet.

    A folder whose metrics.json came from the simulator is left alone (ConfigError): the
    deployed runs' results would otherwise replace a simulated study's.
    """
    folder = Path(folder)
    refuse_simulated_folder(folder)
    built = deployed_metrics(folder)
    if built is None:
        return None
    metrics, config = built
    return write_study_folder(folder, config, metrics)
