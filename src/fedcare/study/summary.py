"""Turn per-seed runs into the study's metrics.json structure (mean ± std over seeds)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.core.metrics import EvalStats
from fedcare.ml.importance import ImportanceCounts
from fedcare.sim.engine import RunResult
from fedcare.sim.evaluation import pooled

SITE_METRICS = ("accuracy", "balanced_accuracy", "auc", "loss")
SURVIVAL_SITE_METRICS = ("c_index", "loss")


@dataclass
class SeedRun:
    seed: int
    result: RunResult
    wall_time_s: float
    importance: dict[str, ImportanceCounts] | None = None  # per site, tabular studies only


def stat(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "values": [float(v) if np.isfinite(v) else None for v in arr],
    }


def summarise_strategy(
    name: str,
    kind: str,
    label: str,
    hyperparameters: dict[str, Any],
    runs: Sequence[SeedRun],
    site_names: Sequence[str],
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One entry of ``metrics.json``'s ``strategies`` list."""
    survival = runs[0].result.final_eval[site_names[0]].is_survival
    per_site: dict[str, dict[str, Any]] = {}
    for site in site_names:
        per_site[site] = {
            m: stat([run.result.final_eval[site].summary()[m] for run in runs])
            for m in (SURVIVAL_SITE_METRICS if survival else SITE_METRICS)
        }
    pooled_stats: list[EvalStats] = [pooled(run.result.final_eval) for run in runs]
    overall = (
        _survival_overall(runs, site_names, pooled_stats)
        if survival
        else _classification_overall(runs, site_names, pooled_stats)
    )
    entry: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "label": label,
        "hyperparameters": hyperparameters,
        "per_site": per_site,
        "overall": overall,
        "curves": _curves(runs, survival),
        "communication": _communication(runs, site_names),
        "wall_time_s": float(np.mean([r.wall_time_s for r in runs])),
    }
    _add_privacy(entry, runs, site_names)
    if all(run.importance for run in runs):
        entry["explanations"] = summarise_importance(runs, feature_names or [], site_names)
    headline = "c_index" if survival else "accuracy"
    if all("global" in run.result.reference_evals for run in runs):
        entry["personalisation"] = {
            site: {
                "personal": per_site[site][headline],
                "global": stat(
                    [run.result.reference_evals["global"][site].summary()[headline] for run in runs]
                ),
            }
            for site in site_names
        }
    return entry


def headline_metric(entry: dict[str, Any]) -> str:
    """The per-site metric a strategy entry is ranked by: accuracy, or C-index (survival)."""
    return "c_index" if "mean_site_c_index" in entry["overall"] else "accuracy"


def _survival_overall(
    runs: Sequence[SeedRun], site_names: Sequence[str], pooled_stats: list[EvalStats]
) -> dict[str, Any]:
    """The mean of the sites' C-indices (FLamby's Fed-TCGA-BRCA metric), the worst site,
    and the C-index of the summed concordance counts (pairs of rows of the same site)."""
    site_c = np.array(
        [[run.result.final_eval[s].c_index for s in site_names] for run in runs], dtype=np.float64
    )
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a site without comparable pairs
        mean_c, worst_c = np.nanmean(site_c, axis=1), np.nanmin(site_c, axis=1)
    return {
        "mean_site_c_index": stat(mean_c),
        "worst_site_c_index": stat(worst_c),
        "within_site_c_index": stat([p.c_index for p in pooled_stats]),
        "pooled_loss": stat([p.loss for p in pooled_stats]),
    }


def _classification_overall(
    runs: Sequence[SeedRun], site_names: Sequence[str], pooled_stats: list[EvalStats]
) -> dict[str, Any]:
    site_acc = np.array(
        [[run.result.final_eval[s].accuracy for s in site_names] for run in runs], dtype=np.float64
    )
    return {
        "mean_site_accuracy": stat(site_acc.mean(axis=1)),
        "worst_site_accuracy": stat(site_acc.min(axis=1)),
        "pooled_accuracy": stat([p.accuracy for p in pooled_stats]),
        "pooled_balanced_accuracy": stat([p.balanced_accuracy for p in pooled_stats]),
        "pooled_auc": stat([p.auc for p in pooled_stats]),
        "pooled_loss": stat([p.loss for p in pooled_stats]),
    }


def _add_privacy(entry: dict[str, Any], runs: Sequence[SeedRun], site_names: Sequence[str]) -> None:
    epsilons = [[rec.epsilon for rec in run.result.history] for run in runs]
    # A run without rounds (the majority-class baseline) spent no privacy at all.
    if epsilons and all(run_eps and None not in run_eps for run_eps in epsilons):
        final = [float(run_eps[-1]) for run_eps in epsilons if run_eps and run_eps[-1] is not None]
        entry["privacy"] = {
            "epsilon": stat(final),
            "epsilon_per_round": [
                float(np.mean([float(run_eps[i] or 0.0) for run_eps in epsilons]))
                for i in range(min(len(e) for e in epsilons))
            ],
        }
    sample = summarise_sample_privacy(runs, site_names)
    if sample is not None:
        entry["sample_privacy"] = sample


def summarise_sample_privacy(
    runs: Sequence[SeedRun], site_names: Sequence[str]
) -> dict[str, Any] | None:
    """Sample-level DP-SGD: each site's epsilon by the end (mean ± std over seeds), its
    epsilon after every round (mean over seeds) and the worst site; None without it."""
    histories = [run.result.history for run in runs]
    if not histories or not all(
        h and all(rec.sample_epsilon is not None for rec in h) for h in histories
    ):
        return None
    rounds = min(len(h) for h in histories)
    final = {
        site: stat([(h[-1].sample_epsilon or {}).get(site, float("nan")) for h in histories])
        for site in site_names
    }
    per_round = {
        site: _finite_or_none(
            np.array(
                [
                    [(h[i].sample_epsilon or {}).get(site, float("nan")) for i in range(rounds)]
                    for h in histories
                ]
            ).mean(axis=0)
        )
        for site in site_names
    }
    worst = max(site_names, key=lambda s: final[s]["mean"] if final[s]["mean"] is not None else -1)
    block: dict[str, Any] = {
        "unit": "sample",
        "epsilon": final,
        "worst_site": worst,
        "worst_epsilon": final[worst],
        "epsilon_per_round": per_round,
    }
    settings = runs[0].result.sample_dp
    if settings:
        block.update(settings)
    return block


def add_personalisation_gains(entries: list[dict[str, Any]]) -> None:
    """Each personalised strategy's per-site gain over the global model and over local-only."""
    local = next((e for e in entries if e["kind"] == "local"), None)
    for entry in entries:
        metric = headline_metric(entry)
        for site, block in entry.get("personalisation", {}).items():
            personal = block["personal"]["mean"]
            block["gain_vs_global"] = _diff(personal, block["global"]["mean"])
            if local is not None:
                block["local"] = local["per_site"][site][metric]
                block["gain_vs_local"] = _diff(personal, local["per_site"][site][metric]["mean"])


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


def _curves(runs: Sequence[SeedRun], survival: bool = False) -> dict[str, Any]:
    evaluated = [[rec for rec in run.result.history if rec.site_metrics] for run in runs]
    rounds = [rec.round for rec in evaluated[0]] if evaluated else []
    if not rounds or any(len(e) != len(rounds) for e in evaluated):
        return {"round": []}

    def series(extract: Any) -> dict[str, list[float | None]]:
        matrix = np.array([[extract(rec) for rec in recs] for recs in evaluated], dtype=np.float64)
        return {
            "mean": _finite_or_none(matrix.mean(axis=0)),
            "std": _finite_or_none(matrix.std(axis=0)),
        }

    if survival:
        return {
            "round": rounds,
            "mean_site_c_index": series(lambda r: r.mean_site("c_index")),
            "pooled_loss": series(lambda r: r.pooled_metrics["loss"]),
            "within_site_c_index": series(lambda r: r.pooled_metrics["c_index"]),
            "train_loss": series(lambda r: r.train_loss),
        }
    return {
        "round": rounds,
        "mean_site_accuracy": series(lambda r: r.mean_site("accuracy")),
        "pooled_loss": series(lambda r: r.pooled_metrics["loss"]),
        "pooled_auc": series(lambda r: r.pooled_metrics["auc"]),
        "train_loss": series(lambda r: r.train_loss),
    }


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: an undefined value (AUC of a one-class test set) becomes null."""
    return [float(v) if np.isfinite(v) else None for v in values]


def summarise_importance(
    runs: Sequence[SeedRun], features: Sequence[str], site_names: Sequence[str]
) -> dict[str, Any]:
    """Permutation importance: all sites combined from their counts, and each site alone."""
    combined = []
    for run in runs:
        counts = [run.importance[s] for s in site_names] if run.importance else []
        total = counts[0]
        for c in counts[1:]:
            total = total + c
        combined.append(total)
    drops = np.array([c.accuracy_drop for c in combined])
    losses = np.array([c.loss_increase for c in combined])
    return {
        "method": "permutation importance on each site's test rows, counts summed over sites",
        "features": list(features),
        "accuracy_drop": {"mean": drops.mean(axis=0).tolist(), "std": drops.std(axis=0).tolist()},
        "loss_increase": {"mean": losses.mean(axis=0).tolist(), "std": losses.std(axis=0).tolist()},
        "per_site": {
            s: np.mean(
                [run.importance[s].accuracy_drop for run in runs if run.importance], axis=0
            ).tolist()
            for s in site_names
        },
    }


def _communication(runs: Sequence[SeedRun], site_names: Sequence[str]) -> dict[str, Any]:
    """Bytes on the wire: totals, per round, and each site's mean upload per round."""
    history = runs[0].result.history
    per_site: dict[str, float] = {}
    for site in site_names:
        sent = [
            rec.site_upload_bytes[site]
            for run in runs
            for rec in run.result.history
            if site in rec.site_upload_bytes
        ]
        per_site[site] = float(np.mean(sent)) if sent else 0.0
    return {
        "upload_bytes": int(np.mean([r.result.upload_bytes for r in runs])),
        "download_bytes": int(np.mean([r.result.download_bytes for r in runs])),
        "upload_bytes_per_round": [int(rec.upload_bytes) for rec in history],
        "site_upload_bytes_per_round": per_site,
    }
