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
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fedcare import __version__
from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.budget import BudgetLedger, JobRef, PrivacyBudget
from fedcare.report.analysis_html import write_analysis_report
from fedcare.runtime.audit import AuditLog
from fedcare.runtime.query_coordinator import QueryCoordinator
from fedcare.runtime.query_plan import ANALYSIS_KINDS, QueryPlan
from fedcare.runtime.query_run import QueryRun, ReleaseRecord, release_record, split_noise
from fedcare.runtime.query_site import QuerySite
from fedcare.stats.noise import NoiseSpec, SiteNoise
from fedcare.stats.protocol import DisclosureRules, SiteTable
from fedcare.stats.secure import SecureSummer
from fedcare.study.analysis_config import AnalysisConfig
from fedcare.study.analysis_data import site_tables

METRICS_TYPE = "analysis"


@dataclass
class QueryOutcome:
    """A finished query: the run (results, suppression notes) and every site's release."""

    run: QueryRun
    releases: list[ReleaseRecord] = field(default_factory=list)
    spent: dict[str, tuple[float, float]] = field(default_factory=dict)  # (epsilon, delta)


def site_noise(
    plan: QueryPlan, ledgers: Path, budget: PrivacyBudget, seed: int
) -> dict[str, SiteNoise]:
    """Each simulated site's noise for ``plan``, charged to its own ledger under ``ledgers``
    (a fresh file per site: a simulation starts every site with its whole budget)."""
    if plan.noise is None:
        return {}
    spec = NoiseSpec(plan.noise.mechanism, plan.noise.epsilon, plan.noise.delta)
    job = JobRef(f"query-{plan.name}", plan.hash)
    ledgers.mkdir(parents=True, exist_ok=True)
    return {
        site: SiteNoise(
            site,
            spec,
            BudgetLedger(
                ledgers / f"{site}.sqlite", site=site, dataset=plan.dataset, budget=budget
            ),
            job,
            SeedStream(seed),
            index,
        )
        for index, site in enumerate(plan.sites)
    }


def run_query(
    plan: QueryPlan,
    tables: Mapping[str, SiteTable],
    own_rules: Mapping[str, DisclosureRules] | None = None,
    noise: Mapping[str, SiteNoise] | None = None,
) -> QueryOutcome:
    """Drive every analysis of ``plan`` to its result over in-memory site tables: each
    site answers (and noises, charging its ledger, when the plan says so); ``sum``
    questions are combined by the plan's secure sum, so only totals are combined."""
    if plan.noise is not None and not noise:
        raise ConfigError("the plan noises every release: give each site its SiteNoise")
    rules = own_rules or {}
    sites = {name: QuerySite.of(plan, tables[name], rules.get(name)) for name in plan.sites}
    summer = SecureSummer(plan.secure)
    run = QueryRun.start(plan)
    outcome = QueryOutcome(run)
    while (question := run.question) is not None:
        releases = {}
        for name, site in sites.items():
            release = site.answer(question)
            if noise:
                release = noise[name].apply(question, release, run.asked)
            releases[name] = split_noise(release)[0]
            outcome.releases.append(release_record(question, run.asked, name, release))
        run.advance(summer.combine(question, releases))
    outcome.spent = {name: each.spent for name, each in (noise or {}).items()}
    return outcome


def analysis_metrics(
    config: AnalysisConfig,
    plan: QueryPlan,
    rows: Mapping[str, int],
    outcome: QueryOutcome,
    wall: float,
    mode: str = "simulated",
) -> dict[str, Any]:
    """The analysis's metrics.json document (``rows``: each site's row count)."""
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
            "mode": mode,
            "config": config.model_dump(mode="json"),
        },
        "sites": [
            {
                "name": name,
                "rows": int(rows.get(name, 0)),
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
        "privacy_spent": {
            site: {"epsilon": eps, "delta": delta} for site, (eps, delta) in outcome.spent.items()
        },
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
        chosen = config.chosen_sites(list(data.tables))
        self.tables = {name: data.tables[name] for name in chosen}
        self.warnings = data.warnings
        self.plan = config.plan(list(self.tables))

    def _budget(self) -> PrivacyBudget:
        dp = self.config.dp
        if dp is None:
            return PrivacyBudget(1.0, 0.0)  # unused: nothing is noised
        return PrivacyBudget(dp.site_budget.epsilon, dp.site_budget.delta)

    def _seed(self) -> int:
        return 0 if self.config.dp is None else self.config.dp.seed

    def run(self) -> AnalysisOutcome:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fedcare-ledgers-") as ledgers:
            noise = site_noise(self.plan, Path(ledgers), self._budget(), self._seed())
            outcome = run_query(self.plan, self.tables, self.config.site_rules(), noise)
            for each in noise.values():
                each.ledger.close()
        rows = {name: len(table.frame) for name, table in self.tables.items()}
        metrics = analysis_metrics(
            self.config, self.plan, rows, outcome, time.perf_counter() - started
        )
        if self.warnings:
            metrics["study"]["data_warnings"] = list(self.warnings)
        write_analysis_folder(self.out_dir, self.config, self.plan, metrics)
        return AnalysisOutcome(self.out_dir, self.plan.hash, metrics)


def write_deployed_query(
    folder: Path, config: AnalysisConfig, plan: QueryPlan, machine: QueryCoordinator
) -> Path:
    """A finished deployed query's folder: the simulated one's files, from the machine;
    its releases from the audit log (complete across coordinator restarts: a question
    asked again after a restart is listed once, with the answers that were combined)."""
    outcome = QueryOutcome(machine.run, list(machine.records))
    metrics = analysis_metrics(config, plan, machine.rows, outcome, 0.0, mode="deployed")
    metrics["study"]["run_id"] = machine.run_id
    audited = audited_releases(folder / "audit.log", plan)
    if audited:
        metrics["releases"] = audited
    return write_analysis_folder(folder, config, plan, metrics)


def audited_releases(log: Path, plan: QueryPlan) -> list[dict[str, Any]]:
    """Every ``query_release`` entry of ``log`` as a release record, the last one per
    site and question, in question then plan-site order."""
    if not log.exists():
        return []
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for entry in AuditLog(log).entries():
        if entry.kind == "query_release":
            # the values' digest is for cross-checking a site's release log, not a release fact
            body = {
                k: v
                for k, v in entry.body.items()
                if k not in ("run_id", "values_sha256", "secure")
            }
            latest[(int(body["question"]), str(body["site"]))] = body
    order = {site: i for i, site in enumerate(plan.sites)}
    return [latest[key] for key in sorted(latest, key=lambda k: (k[0], order.get(k[1], 0)))]
