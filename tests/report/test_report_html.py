"""The HTML report: self-contained, complete, and safe against hostile config strings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fedcare.report.html import render_report, write_report
from fedcare.report.results import parse_results

# Anything that would make a browser fetch from the network.
EXTERNAL = re.compile(
    r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|@import"""
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, fixture_file: Path) -> str:
    folder = tmp_path_factory.mktemp("study")
    (folder / "metrics.json").write_bytes(fixture_file.read_bytes())
    return write_report(folder).read_text(encoding="utf-8")


def test_write_report_puts_html_and_csv_next_to_metrics(study_dir: Path) -> None:
    path = write_report(study_dir)

    assert path == study_dir / "report.html"
    assert (study_dir / "metrics.csv").read_text().startswith("strategy,kind,site,metric")


def test_report_names_every_strategy_and_site(report: str) -> None:
    for name in ("local", "pooled", "fedavg", "fedprox", "scaffold"):
        assert f"<code>{name}</code>" in report
    for label in ("Local only", "FedAvg", "SCAFFOLD"):
        assert label in report
    for site in ("cleveland", "hungarian", "switzerland", "va"):
        assert f">{site}</th>" in report


def test_report_is_self_contained(report: str) -> None:
    assert report.count('src="data:image/png;base64,') == 3
    assert EXTERNAL.search(report) is None
    assert "<script" not in report


def test_best_value_per_column_is_highlighted(report: str) -> None:
    # FedProx has the best worst-site accuracy in the fixture (0.658 ± 0.021).
    assert '<td class="num best">0.658<span class="pm"> ± 0.021' in report


def test_summary_and_data_attribution_are_shown(report: str) -> None:
    assert "heart-disease" in report
    assert "12.3 s" in report
    assert "2026-11-22 10:00 UTC" in report
    assert "Andras Janosi" in report


def test_strings_from_the_config_are_escaped(metrics_doc: dict[str, Any]) -> None:
    metrics_doc["strategies"][2]["label"] = "<script>alert('x')</script>"
    metrics_doc["strategies"][2]["hyperparameters"]["note"] = '"><img src=x onerror=alert(1)>'
    metrics_doc["study"]["name"] = "<b>demo</b>"

    page = render_report(parse_results(metrics_doc))

    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert "&lt;b&gt;demo&lt;/b&gt;" in page


def test_report_without_curves_or_communication_still_renders(
    metrics_doc: dict[str, Any], tmp_path: Path
) -> None:
    for strategy in metrics_doc["strategies"]:
        del strategy["curves"], strategy["communication"]
    metrics_doc["contributions"] = {"shapley": [0.1, 0.2]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics_doc), encoding="utf-8")

    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert page.count("data:image/png;base64,") == 2  # bars and fairness, no learning curves
    assert "Learning curves" not in page
    assert "contributions" in page
