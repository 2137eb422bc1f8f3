"""Figures: PNG bytes from bare Figures, one colour per strategy across every chart."""

from __future__ import annotations

from typing import Any

from fedcare.report.plots import (
    learning_curves_png,
    site_accuracy_png,
    strategy_colours,
    worst_vs_mean_png,
)
from fedcare.report.results import StudyResults, parse_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_each_figure_is_a_png(results: StudyResults) -> None:
    fairness = worst_vs_mean_png(results)

    assert fairness is not None
    for png in (learning_curves_png(results), site_accuracy_png(results), fairness):
        assert png.startswith(PNG_MAGIC)


def test_baselines_are_grey_and_federated_strategies_get_distinct_colours(
    results: StudyResults,
) -> None:
    colours = strategy_colours(results)

    assert colours["local"] != colours["pooled"]
    federated = [colours[n] for n in ("fedavg", "fedprox", "scaffold")]
    assert len(set(federated)) == 3
    assert strategy_colours(results) == colours  # stable from call to call


def test_labels_with_mathtext_characters_still_render(metrics_doc: dict[str, Any]) -> None:
    metrics_doc["strategies"][2]["label"] = "FedAvg $5 per_round"
    metrics_doc["strategies"][3]["label"] = "_hidden"
    results = parse_results(metrics_doc)

    assert site_accuracy_png(results).startswith(PNG_MAGIC)
    assert learning_curves_png(results).startswith(PNG_MAGIC)


def test_fairness_chart_is_skipped_without_worst_site_metric(metrics_doc: dict[str, Any]) -> None:
    for strategy in metrics_doc["strategies"]:
        del strategy["overall"]["worst_site_accuracy"]

    assert worst_vs_mean_png(parse_results(metrics_doc)) is None
