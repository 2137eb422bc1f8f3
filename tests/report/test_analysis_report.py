"""The analysis report: any analysis's tables, what was withheld, escaped and offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.report.analysis_html import write_analysis_report
from fedcare.report.analysis_sections import table_html
from fedcare.report.results import MetricsFileError


def metrics(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": 1,
        "type": "analysis",
        "study": {
            "name": "<b>ages</b>",
            "dataset": "heart-disease",
            "split": "all",
            "plan_hash": "ab" * 32,
            "created": "2026-01-01T00:00:00Z",
            "fedcare_version": "0",
            "wall_time_s": 0.1,
            "mode": "simulated",
            "config": {},
        },
        "sites": [{"name": "north", "rows": 40, "min_cell": 5, "release_extremes": False}],
        "disclosure": {"min_cell": 5, "release_extremes": False, "noise": None, "secure": "none"},
        "analyses": [
            {
                "id": "km",
                "kind": "unknown-kind",
                "result_kind": "x",
                "title": "Survival",
                "tables": {"curve": {"time": [1, 2], "survival": [0.9, None]}},
                "notes": ["north: 3 events < 5 suppressed"],
            }
        ],
        "suppressed": ["km: north: 3 events < 5 suppressed"],
        "releases": [
            {
                "analysis": "km",
                "step": "km_counts",
                "question": 0,
                "site": "north",
                "values": {"at_risk": [2]},
                "suppressed": ["3 events < 5"],
                "noise": [],
            }
        ],
    }
    return base | changes


def write(folder: Path, data: dict[str, object]) -> Path:
    (folder / "metrics.json").write_text(json.dumps(data))
    return write_analysis_report(folder)


def test_an_analysis_without_its_own_renderer_shows_its_tables_and_what_was_withheld(tmp_path):
    page = write(tmp_path, metrics()).read_text()
    assert "&lt;b&gt;ages&lt;/b&gt;" in page and "<b>ages</b>" not in page
    assert "<th>time</th><th>survival</th>" in page
    assert "<td>0.9</td>" in page and '<span class="na">—</span>' in page  # None as a dash
    assert "km: north: 3 events &lt; 5 suppressed" in page
    assert "default-src 'none'" in page and "<script" not in page
    assert "ab" * 32 in page


def test_a_malformed_metrics_file_names_the_field(tmp_path):
    broken = metrics(
        sites=[{"name": "north", "rows": "40", "min_cell": 5, "release_extremes": False}]
    )
    with pytest.raises(MetricsFileError, match=r"field 'sites\[0\].rows': expected int, found str"):
        write(tmp_path, broken)


def test_tables_of_every_shape_render():
    assert "<th>a</th><th>b</th>" in table_html("", [{"a": 1, "b": 2.5}])
    assert '<th scope="row">hr</th><td>1.234</td>' in table_html("", {"hr": 1.23449})
    nested = table_html("cox", {"n": 10, "coef": {"age": 0.5}})
    assert "<h4>cox</h4>" in nested and "<h4>coef</h4>" in nested and "<td>10</td>" in nested


def test_survival_analyses_get_their_figures_at_risk_table_and_tests(tmp_path):
    curve = {
        "times": [1.0, 2.0],
        "at_risk": [10.0, 6.0],
        "events": [2.0, 1.0],
        "survival": [0.8, 0.6667],
        "lower": [0.4, 0.3],
        "upper": [0.95, 0.9],
    }
    km = {
        "id": "km",
        "kind": "logrank",
        "result_kind": "kaplan_meier",
        "title": "Log-rank test",
        "notes": [],
        "tables": {
            "mode": "exact",
            "alpha": 0.05,
            "curves": {"overall": curve, "a": curve, "b": curve},
            "median": {"overall": None, "a": None, "b": None},
            "at_risk_table": {"times": [0, 2], "overall": [20, 12], "a": [10, 6], "b": [10, 6]},
            "logrank": {
                "group": "arm",
                "statistic": 0.0,
                "df": 1,
                "p_value": 1.0,
                "observed": {"a": 3.0, "b": 3.0},
                "expected": {"a": 3.0, "b": 3.0},
            },
        },
    }
    cox = {
        "id": "cox",
        "kind": "cox",
        "result_kind": "cox",
        "title": "Cox",
        "notes": [],
        "tables": {
            "covariates": ["age"],
            "strata": "site",
            "coef": [0.03],
            "se": [0.01],
            "hazard_ratio": [1.03],
            "hr_lower": [1.01],
            "hr_upper": [1.05],
            "p_value": [0.002],
            "n": 20,
            "events": 6,
            "log_likelihood": -20.5,
            "iterations": 4,
            "converged": True,
            "alpha": 0.05,
        },
    }
    page = write(tmp_path, metrics(analyses=[km, cox])).read_text()
    assert page.count('<img src="data:image/png;base64,') == 2  # the curves, the forest plot
    assert "<th>Number at risk</th><th>0</th><th>2</th>" in page
    assert "χ² = 0 on 1 df, p = 1" in page
    assert "<td>age</td><td>0.03</td><td>0.01</td><td>1.03</td><td>1.01 – 1.05</td>" in page
    assert "a baseline hazard per site" in page


def test_a_crosstab_shows_withheld_cells_and_a_histogram_its_bins_and_quantile_bounds(tmp_path):
    crosstab = {
        "id": "ct",
        "kind": "crosstab",
        "result_kind": "crosstab",
        "title": "Cross-tabulation",
        "notes": [],
        "tables": {"row": "sex", "col": "arm", "rows": ["F", "M"], "cols": ["a", "b"]}
        | {"counts": [[12, None], [7, 30]]},
    }
    quartile = {"estimate": 52.5, "interval": [50, 60], "error_bound": 10.0}
    histogram = {
        "id": "h",
        "kind": "histogram",
        "result_kind": "histogram",
        "title": "Histogram",
        "notes": [],
        "tables": {
            "variable": "age",
            "edges": [40.0, 60.0],
            "groups": {"overall": {"counts": [3, 20, 9], "q1": quartile, "median": quartile}},
        },
    }
    page = write(tmp_path, metrics(analyses=[crosstab, histogram])).read_text()
    assert '<td><strong>F</strong></td><td>12</td><td><span class="na">withheld</span></td>' in page
    assert "<td>&lt; 40</td><td>3</td>" in page and "<td>40 – 60</td><td>20</td>" in page
    assert "<td>overall</td><td>median</td><td>52.5</td><td>10</td>" in page
