"""Loading metrics.json: typed results, tidy CSV, and errors that name the field."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedcare.core.errors import FedcareError
from fedcare.report.results import (
    MetricsFileError,
    StudyResults,
    load_results,
    parse_results,
    write_metrics_csv,
)

SITES = ["cleveland", "hungarian", "switzerland", "va"]
STRATEGIES = ["local", "pooled", "fedavg", "fedprox", "scaffold"]


def test_fixture_loads_into_typed_results(fixture_file: Path) -> None:
    results = load_results(fixture_file)

    assert results.study.dataset == "heart-disease"
    assert results.study.seeds == (0, 1, 2, 3, 4)
    assert results.site_names == tuple(SITES)
    assert [s.name for s in results.strategies] == STRATEGIES
    fedavg = results.strategies[2]
    assert fedavg.kind == "federated"
    assert fedavg.per_site["cleveland"]["accuracy"].n_seeds == 5
    assert fedavg.curves is not None
    assert len(fedavg.curves.round) == 50
    assert fedavg.communication is not None
    assert fedavg.communication.total_bytes == 22400


def test_csv_has_one_row_per_strategy_site_metric_plus_overall_rows(
    results: StudyResults, tmp_path: Path
) -> None:
    path = write_metrics_csv(results, tmp_path / "metrics.csv")

    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    per_site = [r for r in rows if r["site"] != "ALL"]
    overall = [r for r in rows if r["site"] == "ALL"]
    assert len(per_site) == len(STRATEGIES) * len(SITES) * 4  # accuracy, bal. acc., auc, loss
    assert len(overall) == len(STRATEGIES) * 6
    row = next(
        r for r in rows if (r["strategy"], r["site"], r["metric"]) == ("fedavg", "va", "accuracy")
    )
    expected = results.strategies[2].per_site["va"]["accuracy"]
    assert float(row["mean"]) == expected.mean
    assert float(row["std"]) == expected.std
    assert row["n_seeds"] == "5"
    assert row["kind"] == "federated"


def test_undefined_metric_is_a_blank_csv_cell(metrics_doc: dict[str, Any], tmp_path: Path) -> None:
    # AUC is undefined on a test set with one class; the runner writes null.
    metrics_doc["strategies"][0]["per_site"]["switzerland"]["auc"]["mean"] = None
    results = parse_results(metrics_doc)
    assert math.isnan(results.strategies[0].per_site["switzerland"]["auc"].mean)

    rows = list(csv.DictReader(write_metrics_csv(results, tmp_path / "m.csv").open()))
    auc = next(
        r
        for r in rows
        if (r["strategy"], r["site"], r["metric"]) == ("local", "switzerland", "auc")
    )
    assert auc["mean"] == ""


def test_missing_strategies_names_the_file_and_field(
    metrics_doc: dict[str, Any], tmp_path: Path
) -> None:
    del metrics_doc["strategies"]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics_doc), encoding="utf-8")

    with pytest.raises(MetricsFileError, match="field 'strategies': is missing") as caught:
        load_results(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, FedcareError)


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (lambda d: d.update(strategies={"fedavg": {}}), "strategies", "expected a list"),
        (
            lambda d: d["strategies"][2]["per_site"]["va"]["auc"].update(mean="0.7"),
            "strategies[2].per_site.va.auc.mean",
            "expected a number, found a string '0.7'",
        ),
        (lambda d: d["study"].update(rounds=True), "study.rounds", "expected an integer"),
        (lambda d: d["strategies"][1].update(kind="central"), "strategies[1].kind", "one of"),
        (
            lambda d: d["strategies"][0]["per_site"].update(basel={}),
            "strategies[0].per_site.basel",
            "not listed under 'sites'",
        ),
        (
            lambda d: d["strategies"][3]["curves"]["pooled_loss"]["mean"].pop(),
            "strategies[3].curves.pooled_loss.mean",
            "49 mean values but 'round' has 50",
        ),
    ],
)
def test_wrong_shapes_name_the_exact_field(
    metrics_doc: dict[str, Any], edit: Any, field: str, problem: str
) -> None:
    edit(metrics_doc)

    with pytest.raises(MetricsFileError) as caught:
        parse_results(metrics_doc, "study/metrics.json")
    assert caught.value.file == "study/metrics.json"
    assert caught.value.field == field
    assert problem in str(caught.value)


def test_invalid_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"schema_version": 1,\n "study": }', encoding="utf-8")

    with pytest.raises(MetricsFileError, match=r"is not valid JSON: .* at line 2"):
        load_results(path)


def test_missing_file_is_a_fedcare_error(tmp_path: Path) -> None:
    with pytest.raises(MetricsFileError, match="cannot be read"):
        load_results(tmp_path / "metrics.json")


def test_newer_schema_asks_for_an_upgrade(metrics_doc: dict[str, Any]) -> None:
    metrics_doc["schema_version"] = 2
    with pytest.raises(MetricsFileError, match="upgrade fedcare"):
        parse_results(metrics_doc)


def test_unknown_sections_ride_along_and_optional_sections_may_be_absent(
    metrics_doc: dict[str, Any],
) -> None:
    metrics_doc["privacy"] = {"epsilon": 3.1}
    fedavg = metrics_doc["strategies"][2]
    fedavg["fairness"] = {"gap": 0.1}
    for key in ("curves", "communication", "hyperparameters", "label", "wall_time_s"):
        del fedavg[key]
    del metrics_doc["study"]["config"]

    results = parse_results(metrics_doc)

    assert results.extra == {"privacy": {"epsilon": 3.1}}
    strategy = results.strategies[2]
    assert strategy.extra == {"fairness": {"gap": 0.1}}
    assert (strategy.curves, strategy.communication, strategy.label) == (None, None, "fedavg")
    assert results.study.config == {}
