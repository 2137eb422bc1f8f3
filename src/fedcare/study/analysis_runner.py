"""Run an analysis file in the simulator and write its study folder.

Every simulated site answers every question through the deployed site's own code
(:class:`~fedcare.runtime.query_site.QuerySite`: the question checked against the plan, the
stricter disclosure rules applied), and the answers are combined and fed to the same
:class:`~fedcare.runtime.query_run.QueryRun` a deployed coordinator drives, so a deployed
query gives these numbers. The folder gets ``metrics.json`` (results, every release and
what was withheld), ``plan.json`` (the plan and its hash), ``config.yaml`` and
``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fedcare import __version__
from fedcare.core.errors import ConfigError
from fedcare.report.analysis_html import write_analysis_report
from fedcare.runtime.query_plan import ANALYSIS_KINDS, QueryPlan
from fedcare.runtime.query_run import QueryRun, ReleaseRecord, release_record
from fedcare.runtime.query_site import QuerySite
from fedcare.stats.protocol import DisclosureRules, SiteTable, combine
from fedcare.study.analysis_config import AnalysisConfig
from fedcare.study.analysis_data import site_tables

METRICS_TYPE = "analysis"


@dataclass
class QueryOutcome:
    """A finished query: the run (results, suppression notes) and every site's release."""

    run: QueryRun
    releases: list[ReleaseRecord] = field(default_factory=list)


def unsupported(plan: QueryPlan) -> str:
    """Why the simulator cannot run ``plan`` as written ("" when it can)."""
    if plan.noise is not None:
        return (
            "'dp' (noise on releases) is not available in this build: no noise mechanism "
            "for query releases is installed; remove 'dp' to run without noise"
        )
    if plan.secure != "none":
        return (
            f"'secure: {plan.secure}' is not available in this build: no secure sum for "
            "query releases is installed; use 'secure: none'"
        )
    return ""


def run_query(
    plan: QueryPlan,
    tables: Mapping[str, SiteTable],
    own_rules: Mapping[str, DisclosureRules] | None = None,
) -> QueryOutcome:
    """Drive every analysis of ``plan`` to its result over in-memory site tables."""
    problem = unsupported(plan)
    if problem:
        raise ConfigError(problem)
    rules = own_rules or {}
    sites = {name: QuerySite.of(plan, tables[name], rules.get(name)) for name in plan.sites}
    run = QueryRun.start(plan)
    outcome = QueryOutcome(run)
    while (question := run.question) is not None:
        releases = {name: site.answer(question) for name, site in sites.items()}
        outcome.releases.extend(
            release_record(question, run.asked, name, release) for name, release in releases.items()
        )
        run.advance(combine(question, releases))
    return outcome


def analysis_metrics(
    config: AnalysisConfig,
    plan: QueryPlan,
    tables: Mapping[str, SiteTable],
    outcome: QueryOutcome,
    wall: float,
) -> dict[str, Any]:
    """The analysis's metrics.json document."""
    titles = {name: kind.title for name, kind in ANALYSIS_KINDS.items()}
    own = config.site_rules()
    return {
        "schema_version": 1,
        "type": METRICS_TYPE,
        "study": {
            "name": config.name,
            "dataset": plan.dataset,
            "split": plan.split,
            "plan_hash": plan.hash,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fedcare_version": __version__,
            "wall_time_s": wall,
            "mode": "simulated",
            "config": config.model_dump(mode="json"),
        },
        "sites": [
            {
                "name": name,
                "rows": len(tables[name].frame),
                "min_cell": plan.site_rules(own.get(name)).min_cell,
                "release_extremes": plan.site_rules(own.get(name)).release_extremes,
            }
            for name in plan.sites
        ],
        "disclosure": {
            "min_cell": plan.rules.min_cell,
            "release_extremes": plan.rules.release_extremes,
            "noise": None if plan.noise is None else plan.noise.to_dict(),
            "secure": plan.secure,
        },
        "analyses": [
            {**result, "title": titles.get(result["kind"], result["kind"])}
            for result in outcome.run.results
        ],
        "suppressed": list(outcome.run.suppressed),
        "releases": [r.to_dict() for r in outcome.releases],
    }


def write_analysis_folder(
    out_dir: Path, config: AnalysisConfig, plan: QueryPlan, metrics: dict[str, Any]
) -> Path:
    """metrics.json, plan.json, config.yaml, then report.html from metrics.json alone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    (out_dir / "plan.json").write_text(
        json.dumps({"hash": plan.hash, "plan": plan.to_dict()}, indent=2, allow_nan=False)
    )
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    return write_analysis_report(out_dir)


@dataclass(frozen=True)
class AnalysisOutcome:
    directory: Path
    plan_hash: str
    metrics: dict[str, Any]


class AnalysisRunner:
    """Load the sites' tables, build the plan, run it and write the folder."""

    def __init__(self, config: AnalysisConfig, out_dir: Path) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        data = site_tables(config.dataset.name, config.dataset.params, config.split)
        self.tables = data.tables
        self.warnings = data.warnings
        self.plan = config.plan(list(self.tables))
        problem = unsupported(self.plan)
        if problem:
            raise ConfigError(problem)

    def run(self) -> AnalysisOutcome:
        started = time.perf_counter()
        outcome = run_query(self.plan, self.tables, self.config.site_rules())
        metrics = analysis_metrics(
            self.config, self.plan, self.tables, outcome, time.perf_counter() - started
        )
        if self.warnings:
            metrics["study"]["data_warnings"] = list(self.warnings)
        write_analysis_folder(self.out_dir, self.config, self.plan, metrics)
        return AnalysisOutcome(self.out_dir, self.plan.hash, metrics)
