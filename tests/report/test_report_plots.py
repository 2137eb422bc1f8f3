"""Figures: PNG bytes from bare Figures, one colour per strategy across every chart."""

from __future__ import annotations

import copy
from typing import Any

from fedcare.report.plots import (
    federated_style,
    learning_curves_png,
    site_accuracy_png,
    strategy_colours,
    strategy_styles,
    worst_vs_mean_png,
)
from fedcare.report.results import StudyResults, parse_results
from fedcare.study.presets import heart_demo_config

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


def _demo_results(doc: dict[str, Any]) -> StudyResults:
    """The fixture's numbers under every series name the shipped demo reports."""
    config = heart_demo_config()
    template = next(s for s in doc["strategies"] if s["kind"] == "federated")
    entries = []
    names = [(b, b) for b in config.baselines]
    names += [(s.display_name, "federated") for s in config.all_strategies]
    for name, kind in names:
        entry = copy.deepcopy(template)
        entry.update(name=name, kind=kind, label=name)
        entries.append(entry)
    doc["strategies"] = entries
    return parse_results(doc)


def test_every_series_of_the_demo_has_its_own_colour_and_line_style(metrics_doc):
    results = _demo_results(metrics_doc)

    styles = strategy_styles(results)

    assert len(styles) == 14  # 3 baselines and 11 federated strategies
    pairs = {(s.colour, s.linestyle) for s in styles.values()}
    assert len(pairs) == len(styles)
    looks = {(s.colour, s.linestyle, s.marker, s.hatch) for s in styles.values()}
    assert len(looks) == len(styles)  # bars (hatch) and markers keep them apart too
    assert learning_curves_png(results).startswith(PNG_MAGIC)


def test_up_to_36_federated_strategies_never_share_a_style():
    styles = [federated_style(i) for i in range(36)]

    assert len({(s.colour, s.linestyle) for s in styles}) == 36
    assert len({(s.colour, s.hatch) for s in styles}) == 36
