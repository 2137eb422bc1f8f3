"""``fedcare analyze``'s configuration and simulated run, on the shipped heart data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.heart import load_heart_disease
from fedcare.study.analysis_config import load_analysis_config, parse_analysis_config
from fedcare.study.analysis_runner import AnalysisRunner
from tests.runtime.query_kinds import moments_kind  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("moments_kind")

BASE = {
    "name": "heart-ages",
    "dataset": {"name": "heart-disease"},
    "analyses": [{"kind": "moments", "params": {"column": "age"}}],
}


def test_every_key_is_checked_with_a_hint():
    with pytest.raises(
        ConfigError, match=r"unknown key 'disclosure.min_cel'; did you mean 'min_cell'"
    ):
        parse_analysis_config({**BASE, "disclosure": {"min_cel": 3}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'disclosure.sites.va.min_cels'; did you mean 'min_cell'"
    ):
        parse_analysis_config({**BASE, "disclosure": {"sites": {"va": {"min_cels": 3}}}})
    with pytest.raises(ConfigError, match=r"analyses\[0\]: unknown analysis kind 'moment'"):
        parse_analysis_config({**BASE, "analyses": [{"kind": "moment"}]})
    with pytest.raises(ConfigError, match=r"analyses\[0\] \(moments\): 'column': Field required"):
        parse_analysis_config({**BASE, "analyses": [{"kind": "moments"}]})
    with pytest.raises(ConfigError, match="the gaussian mechanism needs 'delta'"):
        parse_analysis_config({**BASE, "dp": {"mechanism": "gaussian", "epsilon": 1}})
    with pytest.raises(ConfigError, match="'split': Input should be 'train', 'test' or 'all'"):
        parse_analysis_config({**BASE, "split": "validation"})


def test_a_file_without_what_it_is_about_is_refused(tmp_path):
    empty = tmp_path / "a.yaml"
    empty.write_text("")
    with pytest.raises(
        ConfigError, match=r"a.yaml: expected a mapping with name, dataset, analyses"
    ):
        load_analysis_config(empty)
    partial = tmp_path / "b.yaml"
    partial.write_text("name: x\ndataset: {params: {}}\n")
    with pytest.raises(ConfigError, match=r"missing required key\(s\): analyses, dataset.name"):
        load_analysis_config(partial)


def test_repeated_kinds_get_numbered_ids():
    twice = [{"kind": "moments", "params": {"column": c}} for c in ("age", "chol")]
    config = parse_analysis_config({**BASE, "analyses": twice})
    assert [s.id for s in config.specs()] == ["moments-1", "moments-2"]


def pooled_ages() -> pd.Series:
    heart = load_heart_disease(normalisation="none")
    column = heart.feature_names.index("age")
    frames = [pd.Series(s.x_train[:, column]) for s in heart.sites]
    frames += [pd.Series(s.x_test[:, column]) for s in heart.sites]
    return pd.concat(frames).astype(float)


def test_the_simulated_run_gives_the_pooled_numbers_and_writes_the_folder(tmp_path):
    config = parse_analysis_config(
        {**BASE, "disclosure": {"min_cell": 5, "sites": {"switzerland": {"min_cell": 8}}}}
    )
    outcome = AnalysisRunner(config, tmp_path / "out").run()
    folder = Path(outcome.directory)
    assert {p.name for p in folder.iterdir()} == {
        "metrics.json",
        "plan.json",
        "config.yaml",
        "report.html",
    }
    metrics = json.loads((folder / "metrics.json").read_text())
    [entry] = metrics["analyses"]
    ages = pooled_ages()
    assert entry["tables"]["summary"]["n"] == len(ages)
    assert entry["tables"]["summary"]["mean"] == pytest.approx(ages.mean(), rel=1e-12)
    assert entry["tables"]["summary"]["variance"] == pytest.approx(ages.var(), rel=1e-12)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["hash"] == outcome.plan_hash == metrics["study"]["plan_hash"]
    assert {s["name"]: s["min_cell"] for s in metrics["sites"]}["switzerland"] == 8
    # Every site answered both questions; each release is listed with its arrays' shapes.
    assert [(r["question"], r["site"]) for r in metrics["releases"]] == [
        (q, s) for q in (0, 1) for s in ("cleveland", "hungarian", "switzerland", "va")
    ]
    assert metrics["releases"][0]["values"] == {"n": [1], "sum": [1]}


def test_sites_too_small_for_the_minimum_cell_release_nothing_and_the_report_says_so(tmp_path):
    config = parse_analysis_config({**BASE, "split": "test", "disclosure": {"min_cell": 40}})
    outcome = AnalysisRunner(config, tmp_path).run()
    metrics = outcome.metrics
    rows = {s["name"]: s["rows"] for s in metrics["sites"]}
    small = sorted(s for s, n in rows.items() if n < 40)
    assert small  # the heart test splits hold 20 to 60 rows
    withheld = {r["site"] for r in metrics["releases"] if r["suppressed"]}
    assert withheld == set(small)
    assert any(line.startswith(f"moments: {small[0]}: age:") for line in metrics["suppressed"])
    assert metrics["analyses"][0]["tables"]["summary"]["n"] == sum(
        n for s, n in rows.items() if s not in small
    )
    report = (tmp_path / "report.html").read_text()
    assert "Suppressed or noised, and why" in report and f"{small[0]}: age:" in report


def test_a_secure_sum_gives_the_clear_totals_and_noise_is_charged_to_each_sites_ledger(tmp_path):
    plain = AnalysisRunner(parse_analysis_config(BASE), tmp_path / "plain").run()
    secure = parse_analysis_config({**BASE, "secure": "secagg"})
    hidden = AnalysisRunner(secure, tmp_path / "secagg").run()
    assert hidden.plan_hash != plain.plan_hash  # the owners approve the secure sum too
    clear, summed = (o.metrics["analyses"][0]["tables"]["summary"] for o in (plain, hidden))
    assert summed["n"] == clear["n"]
    assert summed["mean"] == pytest.approx(clear["mean"], rel=1e-9)  # 2**-32 fixed point
    crosstab = {
        "kind": "crosstab",
        "params": {"row": "sex", "row_levels": ["0", "1"]},
    }
    noised = parse_analysis_config(
        {**BASE, "analyses": [crosstab], "dp": {"mechanism": "laplace", "epsilon": 0.5}}
    )
    metrics = AnalysisRunner(noised, tmp_path / "dp").run().metrics
    assert metrics["privacy_spent"] == {
        site: {"epsilon": 0.5, "delta": 0.0}
        for site in ("cleveland", "hungarian", "switzerland", "va")
    }
    assert all(
        r["noise"] and r["noise"][0].startswith("noised counts") for r in metrics["releases"]
    )
    unbounded = parse_analysis_config({**BASE, "dp": {"mechanism": "laplace", "epsilon": 0.5}})
    with pytest.raises(ConfigError, match=r"would release \['n', 'sum'\] with no bound"):
        AnalysisRunner(unbounded, tmp_path / "refused").run()


def test_a_tcga_brca_survival_analysis_matches_lifelines_on_the_pooled_rows(tmp_path):
    from lifelines import CoxPHFitter, KaplanMeierFitter

    from fedcare.stats.site_tables import tcga_brca_site_tables

    config = parse_analysis_config(
        {
            "name": "brca",
            "dataset": {"name": "tcga-brca"},
            "disclosure": {"min_cell": 1},
            "analyses": [
                {"kind": "km"},
                {"kind": "cox", "params": {"covariates": ["age_at_index", "race_white"]}},
            ],
        }
    )
    km, cox = AnalysisRunner(config, tmp_path).run().metrics["analyses"]
    pooled = pd.concat([t.frame for t in tcga_brca_site_tables("all").values()])
    reference = KaplanMeierFitter().fit(pooled["T"], pooled["E"])
    curve = km["tables"]["curves"]["overall"]
    expected = reference.survival_function_at_times(curve["times"]).to_numpy()
    assert max(abs(a - b) for a, b in zip(curve["survival"], expected, strict=True)) <= 1e-12
    fitted = CoxPHFitter().fit(pooled[["T", "E", "age_at_index", "race_white"]], "T", "E")
    assert cox["tables"]["coef"] == pytest.approx(fitted.params_.to_list(), rel=1e-6)
    assert cox["tables"]["se"] == pytest.approx(fitted.standard_errors_.to_list(), rel=1e-6)
    assert cox["tables"]["log_likelihood"] == pytest.approx(fitted.log_likelihood_, rel=1e-6)


def test_hospitals_own_survival_files_are_analysed_and_the_plan_names_the_schema_not_paths(
    tmp_path,
):
    import hashlib

    import numpy as np
    from lifelines import KaplanMeierFitter

    schema = tmp_path / "schema.yaml"
    schema.write_text(
        "survival: {time: months, event: died}\nfeatures:\n  - {name: age, type: numeric}\n"
    )
    rng = np.random.default_rng(4)
    files = {}
    for site, n in (("north", 60), ("south", 45), ("east", 30)):
        frame = pd.DataFrame(
            {
                "age": rng.integers(30, 90, n),
                "months": rng.integers(1, 40, n).astype(float),  # ties on purpose
                "died": (rng.random(n) < 0.5).astype(int) if site != "east" else 0,
            }
        )
        frame.to_csv(tmp_path / f"{site}.csv", index=False)
        files[site] = f"{site}.csv"
    (tmp_path / "analysis.yaml").write_text(
        "name: own\n"
        f"dataset: {{name: tabular, params: {{schema: schema.yaml, files: {files}}}}}\n"
        "disclosure: {min_cell: 1}\n"
        "analyses: [{kind: km}]\n"
    )
    runner = AnalysisRunner(load_analysis_config(tmp_path / "analysis.yaml"), tmp_path / "out")
    assert runner.plan.dataset_params == {
        "schema_sha256": hashlib.sha256(schema.read_bytes()).hexdigest()
    }
    metrics = runner.run().metrics
    assert any("east" in w and "censored" in w for w in metrics["study"]["data_warnings"])
    pooled = pd.concat([pd.read_csv(tmp_path / f) for f in files.values()])
    curve = metrics["analyses"][0]["tables"]["curves"]["overall"]
    expected = KaplanMeierFitter().fit(pooled["months"], pooled["died"])
    reference = expected.survival_function_at_times(curve["times"]).to_numpy()
    assert np.abs(np.array(curve["survival"]) - reference).max() <= 1e-12


@pytest.mark.parametrize(
    ("entry", "fix"),
    [
        ({"kind": "km"}, "mode: grid"),
        ({"kind": "cox", "params": {"covariates": ["age_at_index"]}}, "strata: site"),
        (
            {"kind": "cindex", "params": {"covariates": ["age_at_index"], "coef": [0.1]}},
            "pooled: false",
        ),
    ],
)
def test_exact_event_times_under_a_min_cell_above_one_are_refused_before_approval(entry, fix):
    # Every site would withhold them: the plan is refused with both ways out named.
    study = {"name": "brca", "dataset": {"name": "tcga-brca"}, "analyses": [entry]}
    with pytest.raises(ConfigError, match=rf"min_cell 5 forbids at every site.*min_cell: 1.*{fix}"):
        parse_analysis_config(study)
