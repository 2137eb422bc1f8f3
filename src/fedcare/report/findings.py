"""What the numbers say, in words: the report's findings and its description of the baselines.

Everything here is worded from the study's own results (mean site accuracy, the metric of
record), never assumed: pooled is called the upper reference only where it is one, and a
study where no model beats predicting the majority class says so plainly. The same
sentences end the terminal's results table and open the report.
"""

from __future__ import annotations

import math

from fedcare.report.results import Strategy, StudyResults

METRIC = "mean_site_accuracy"
TIE = 5e-4  # half the last displayed digit: values that print the same are not "above"


def mean_accuracy(strategy: Strategy) -> float:
    stat = strategy.overall.get(METRIC)
    return stat.mean if stat is not None else math.nan


def _baseline(results: StudyResults, kind: str) -> Strategy | None:
    found = [s for s in results.strategies if s.kind == kind and math.isfinite(mean_accuracy(s))]
    return found[0] if found else None


def _above(a: float, b: float) -> bool:
    return a > b + TIE


def _below(a: float, b: float) -> bool:
    return a < b - TIE


def pooled_shortfalls(results: StudyResults) -> list[str]:
    """The baselines pooled falls below, e.g. ``["local (0.790)"]``; empty when none."""
    pooled = _baseline(results, "pooled")
    if pooled is None:
        return []
    out = []
    for kind, name in (("local", "local"), ("majority", "the majority class")):
        other = _baseline(results, kind)
        if other is not None and _below(mean_accuracy(pooled), mean_accuracy(other)):
            out.append(f"{name} ({mean_accuracy(other):.3f})")
    return out


def baseline_notes(results: StudyResults) -> list[tuple[str, str]]:
    """(name, description) for each kind of result the study holds, in report order."""
    kinds = {s.kind for s in results.strategies}
    notes = []
    if "local" in kinds:
        notes.append(("Local", "each site trains alone and is tested on its own test set."))
    if "pooled" in kinds:
        shortfalls = pooled_shortfalls(results)
        pooled = "one model trained on all sites' data together"
        if shortfalls:
            pooled += (
                f"; here it is below {' and '.join(shortfalls)}, so it is no upper reference "
                "for this data."
            )
        else:
            pooled += ", the usual upper reference."
        notes.append(("Pooled", pooled))
    if "majority" in kinds:
        notes.append(
            (
                "Majority class",
                "each site predicts the most common class of its own training rows, with no "
                "model: the floor a model has to beat.",
            )
        )
    if "federated" in kinds:
        notes.append(("Federated", "one model trained without moving data."))
    return notes


def findings(results: StudyResults) -> list[str]:
    """Plain sentences on the mean site accuracy: best strategy, majority floor, pooled."""
    models = [
        s for s in results.strategies if s.kind != "majority" and math.isfinite(mean_accuracy(s))
    ]
    out = []
    federated = [s for s in models if s.kind == "federated"]
    if federated:
        best = max(federated, key=mean_accuracy)
        refs = [
            f"{name} {mean_accuracy(b):.3f}"
            for kind, name in (("local", "local"), ("pooled", "pooled"), ("majority", "majority"))
            if (b := _baseline(results, kind)) is not None
        ]
        context = f" ({', '.join(refs)})" if refs else ""
        out.append(
            f"Best federated strategy: {best.label}, mean site accuracy "
            f"{mean_accuracy(best):.3f}{context}."
        )
    majority = _baseline(results, "majority")
    if majority is not None and models:
        out.append(_majority_finding(models, mean_accuracy(majority)))
    shortfalls = pooled_shortfalls(results)
    pooled = _baseline(results, "pooled")
    if pooled is not None and shortfalls:
        out.append(
            f"Pooled ({mean_accuracy(pooled):.3f}) is below {' and '.join(shortfalls)} here: "
            "pooling every site's rows did not help, so it is no upper reference for this study."
        )
    return out


def _majority_finding(models: list[Strategy], floor: float) -> str:
    best = max(models, key=mean_accuracy)
    if not _above(mean_accuracy(best), floor):
        return (
            f"Nothing beat predicting the majority class: the best model, {best.label}, "
            f"reaches {mean_accuracy(best):.3f} mean site accuracy against {floor:.3f} for "
            "always answering each site's most common class. On this data the models have "
            "learned nothing beyond the class balance."
        )
    behind = [s.label for s in models if not _above(mean_accuracy(s), floor)]
    if behind:
        return (
            f"{len(behind)} of {len(models)} models do not beat the majority class "
            f"({floor:.3f}): {', '.join(behind)}."
        )
    return f"Every model beats the majority class ({floor:.3f})."
