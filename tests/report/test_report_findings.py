"""The report words its findings from the numbers: majority-class floor, pooled reference."""

from __future__ import annotations

import copy
import re
from typing import Any

from fedcare.cli.progress import findings_lines, results_table
from fedcare.report.findings import baseline_notes, findings
from fedcare.report.html import render_report
from fedcare.report.results import parse_results
from fedcare.report.units import format_bytes


def _set_mean(doc: dict[str, Any], name: str, value: float) -> None:
    entry = next(s for s in doc["strategies"] if s["name"] == name)
    entry["overall"]["mean_site_accuracy"]["mean"] = value


def _with_majority(doc: dict[str, Any], mean: float) -> dict[str, Any]:
    """The fixture plus a majority-class entry with mean site accuracy ``mean``."""
    majority = copy.deepcopy(next(s for s in doc["strategies"] if s["kind"] == "local"))
    majority.update(name="majority", kind="majority", label="Majority class")
    majority.pop("curves", None)
    majority["overall"]["mean_site_accuracy"]["mean"] = mean
    doc["strategies"].insert(2, majority)
    return doc


def _results_note(page: str) -> str:
    return page.split("<h2>Results</h2>", 1)[1].split("</p>", 1)[0]


def test_pooled_is_the_upper_reference_only_where_it_is_above_local(metrics_doc):
    # Fixture: local 0.6805, pooled 0.7514.
    above = render_report(parse_results(metrics_doc))
    _set_mean(metrics_doc, "pooled", 0.6500)
    below = render_report(parse_results(metrics_doc))

    assert "the usual upper reference" in _results_note(above)
    assert "upper reference" not in _results_note(below).replace("no upper reference", "")
    assert "below local (0.680)" in _results_note(below)
    assert "Pooled (0.650) is below local (0.680) here" in below


def test_when_nothing_beats_the_majority_class_the_summary_says_so(metrics_doc):
    # Best model in the fixture: pooled 0.7514; the majority class gets 0.7600.
    results = parse_results(_with_majority(metrics_doc, 0.7600))

    lines = findings(results)
    page = render_report(results)

    assert lines[1].startswith("Nothing beat predicting the majority class: the best model, ")
    assert "0.751 mean site accuracy against 0.760" in lines[1]
    summary = page.split("<h2>Results</h2>", 1)[0]
    assert "Nothing beat predicting the majority class" in summary
    assert "below the majority class (0.760)" in _results_note(page)


def test_models_that_do_not_beat_the_majority_class_are_named(metrics_doc):
    # fedavg 0.7351 sits below a 0.7400 floor; fedprox 0.7431, scaffold 0.7426 are above.
    lines = findings(parse_results(_with_majority(metrics_doc, 0.7400)))

    assert "2 of 5 models do not beat the majority class (0.740): Local only, FedAvg." in lines


def test_terminal_prints_the_same_findings_as_the_report(metrics_doc):
    doc = _with_majority(metrics_doc, 0.7600)

    assert findings_lines(doc) == findings(parse_results(doc))


def test_deployed_report_describes_only_what_it_contains(metrics_doc):
    # A deployed study: federated runs only, no baselines.
    metrics_doc["strategies"] = [s for s in metrics_doc["strategies"] if s["kind"] == "federated"]
    results = parse_results(metrics_doc)

    page = render_report(results)

    captions = " ".join(re.findall(r"<(?:figcaption|caption)>(.*?)</", page)).lower()
    note = _results_note(page).lower()
    for absent in ("baseline", "local", "majority"):
        assert absent not in captions
        assert absent not in note
    assert "pooled (" not in captions and "pooled" not in note
    assert [name for name, _ in baseline_notes(results)] == ["Federated"]


def test_traffic_uses_one_binary_unit_in_terminal_and_report(metrics_doc):
    # fedavg moves 11200 B up and 11200 B down: 21.9 KiB in every place that shows it.
    fed = metrics_doc["strategies"][2]
    fed["communication"]["site_upload_bytes_per_round"] = {
        s["name"]: 1536.0 for s in metrics_doc["sites"]
    }
    page = render_report(parse_results(metrics_doc))
    table = results_table(metrics_doc)
    terminal = {col.header: list(col.cells) for col in table.columns}

    assert terminal["traffic"][2] == "21.9 KiB" == format_bytes(11200 + 11200)
    assert '<td class="num best">21.9 KiB</td>' in page  # results table (least traffic)
    assert ">10.9 KiB</td>" in page and ">1.5 KiB</td>" in page  # communication section
    assert not re.search(r"\bkB\b|Bytes moved|upload kB", page)


def test_format_bytes_picks_the_largest_binary_unit_below_1024():
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]
    assert format_bytes(None) == "—"
