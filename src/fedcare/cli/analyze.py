"""``fedcare analyze analysis.yaml``: federated statistics and survival analysis, simulated.

The same YAML runs deployed as a ``query`` job; here every site's rows stay in their own
table and only what each site's disclosure rules release is combined.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import friendly_errors

# Logs and CI have no terminal width; give lines room (as the other commands do).
console = Console(width=None if sys.stdout.isatty() else 160)

HELP = """\
Run an analysis file in the simulator and write its study folder (metrics.json,
report.html, plan.json with the plan hash owners approve, config.yaml).

Example analysis.yaml (rows never pooled; every count released is 0 or at least 5):

    name: brca-survival
    dataset: {name: tcga-brca}        # or tabular with schema + files, as in a study
    split: all                        # train, test or all rows of each site
    disclosure: {min_cell: 5}         # counts below 5 never leave a site
    analyses:
      - {kind: describe, params: {numeric: \\[age_at_index]}}
      - {kind: km, params: {mode: grid, grid: \\[365, 730, 1825, 3650]}}
      - {kind: cox, params: {covariates: \\[age_at_index], strata: site}}

Exact event times (kind km's default mode, a pooled Cox, a pooled C-index) need
disclosure: {min_cell: 1}, which each site must also allow.
"""


@friendly_errors
def analyze(
    config: Annotated[Path, typer.Argument(help="Analysis YAML file.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Study folder (default: the file's 'output' or studies/NAME)."),
    ] = None,
) -> None:
    from fedcare.study.analysis_config import load_analysis_config
    from fedcare.study.analysis_runner import AnalysisRunner

    cfg = load_analysis_config(config)
    target = out or Path(cfg.output or f"studies/{cfg.name}")
    runner = AnalysisRunner(cfg, target)
    rows = ", ".join(f"{name} {len(t.frame)}" for name, t in runner.tables.items())
    console.print(
        f"[bold]Analysis[/] {escape(cfg.name)}: dataset {escape(cfg.dataset.name)}, "
        f"{cfg.split} rows ({escape(rows)}), {len(runner.plan.analyses)} analyses",
        highlight=False,
    )
    for warning in runner.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(f"Plan hash: {runner.plan.hash}", highlight=False)
    outcome = runner.run()
    for entry in outcome.metrics["analyses"]:
        console.print(f"  {escape(entry['title'])} ({escape(entry['id'])}): done", highlight=False)
    withheld = len(outcome.metrics["suppressed"])
    if withheld:
        console.print(
            f"[yellow]{withheld} value(s) suppressed at the sites[/] (listed in the report)",
            highlight=False,
        )
    console.print(
        f"Study folder: [bold]{escape(str(outcome.directory))}[/] (report.html, metrics.json, plan.json)"
    )


def is_analysis_file(path: Path) -> bool:
    """Whether a YAML given to ``coordinator start --study`` is an analysis (a query job)."""
    from fedcare.data.yaml_config import read_yaml

    try:
        raw = read_yaml(path, "study file")
    except Exception:  # the study loader reports what is wrong with the file
        return False
    return isinstance(raw, dict) and "analyses" in raw and "strategies" not in raw


def deploy_query(
    config_path: Path,
    security: Any,
    address: str,
    out: Path | None,
    *,
    run_id: str | None,
    insecure: bool,
    port_file: Path | None,
    ignored: dict[str, object],
) -> None:
    """``fedcare coordinator start --study analysis.yaml``: the analysis as a query job."""
    import secrets

    from fedcare.core.errors import ConfigError
    from fedcare.net.query_server import serve_query
    from fedcare.study.analysis_config import load_analysis_config
    from fedcare.study.analysis_runner import write_deployed_query

    given = sorted(name for name, value in ignored.items() if value)
    if given:
        raise ConfigError(
            f"{', '.join('--' + g.replace('_', '-') for g in given)}: training options; an "
            "analysis file deploys as a query job, which has no strategies, seeds or rounds"
        )
    cfg = load_analysis_config(config_path)
    if not cfg.disclosure.sites == {}:
        raise ConfigError(
            "disclosure.sites simulates hospitals' own rules; a deployed site sets its own "
            "(fedcare site query --min-cell N); remove it to deploy"
        )
    sites = _deployed_sites(cfg)
    plan = cfg.plan(sites)
    folder = out or Path(cfg.output or f"studies/{cfg.name}")
    if (folder / "metrics.json").exists():
        raise ConfigError(f"{folder} already holds results; use another --out folder")
    console.print(
        f"[bold]Query[/] {escape(cfg.name)} over {', '.join(plan.sites)}", highlight=False
    )
    console.print(f"Plan hash (each site approves it): {plan.hash}", highlight=False)
    machine = serve_query(
        plan,
        address,
        security,
        folder,
        run_id=run_id or f"query-{secrets.token_hex(4)}",
        insecure=insecure,
        port_file=port_file,
        log=lambda line: console.print(escape(line), highlight=False),
    )
    if machine.failure:
        raise ConfigError(f"the query failed: {machine.failure}")
    write_deployed_query(folder, cfg, plan, machine)
    console.print(f"Study folder: [bold]{escape(str(folder))}[/] (report.html, metrics.json)")


def _deployed_sites(cfg: Any) -> list[str]:
    """The sites a deployed query waits for: the dataset's own (shipped data) or the
    names of ``dataset.params.files`` (hospitals' own tables; only the names are used)."""
    from fedcare.core.errors import ConfigError
    from fedcare.study.analysis_data import shipped_sites

    if cfg.dataset.name == "tabular":
        files = cfg.dataset.params.get("files")
        if not isinstance(files, dict) or not files:
            raise ConfigError("dataset 'tabular' needs params.files naming each site")
        return [str(s) for s in files]
    return shipped_sites(cfg.dataset.name)


@friendly_errors
def site_query(
    coordinator: Annotated[str, typer.Option(help="HOST:PORT of the coordinator.")],
    data: Annotated[
        str,
        typer.Option(
            help="This site's rows: DATASET:SITE for a dataset shipped with fedcare (e.g. "
            "tcga-brca:northeast), or a CSV/Parquet file with --schema."
        ),
    ],
    schema: Annotated[
        Path | None, typer.Option(help="The schema YAML of a file given to --data.")
    ] = None,
    bundle: Annotated[Path | None, typer.Option(help="This site's bundle folder.")] = None,
    state: Annotated[
        Path, typer.Option(help="Site folder: approvals, release log (query-releases.log).")
    ] = Path("fedcare-site"),
    name: Annotated[
        str | None, typer.Option(help="Site name (only with --insecure; else the certificate's).")
    ] = None,
    min_cell: Annotated[
        int | None,
        typer.Option(
            min=1, help="This site's own minimum cell size; the plan's applies where stricter."
        ),
    ] = None,
    release_extremes: Annotated[
        bool,
        typer.Option(help="Whether this site lets min/max leave it at all (when the plan asks)."),
    ] = True,
    budget_epsilon: Annotated[
        float | None,
        typer.Option(
            help="Privacy budget (epsilon) of this dataset, kept in the site's ledger "
            "(--state/budget.sqlite); plans with dp are charged to it, refused without it."
        ),
    ] = None,
    budget_delta: Annotated[
        float, typer.Option(help="Privacy budget (delta), with --budget-epsilon.")
    ] = 0.0,
    give_up_after: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Minutes to keep reconnecting while the coordinator is away (a restarted "
            "coordinator resumes the query from its checkpoint).",
        ),
    ] = 30.0,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain text on loopback, for tests only.")
    ] = False,
) -> None:
    """Answer a query job (federated statistics, survival analysis) on this hospital's rows,
    once its owner has approved the plan's hash (fedcare site approve HASH)."""
    from fedcare.core.errors import ConfigError
    from fedcare.net.query_agent import run_query_site
    from fedcare.net.tls import TlsBundle
    from fedcare.runtime.approvals import ApprovalStore
    from fedcare.runtime.query_release_log import RELEASE_LOG, SiteReleaseLog, local_signing_key
    from fedcare.stats.protocol import DisclosureRules
    from fedcare.study.analysis_config import schema_digest
    from fedcare.study.analysis_data import site_table_loader

    if insecure:
        if not name:
            raise ConfigError("--insecure needs --name (there is no certificate to name the site)")
        tls, site_name = None, name
        signing_key = local_signing_key(state / "release-signing.key")
    else:
        if bundle is None:
            raise ConfigError(
                "--bundle is required (this site's bundle), or --insecure on loopback"
            )
        tls = TlsBundle.load(bundle)
        site_name = tls.name
        signing_key = tls.signing_private_key()
    table_for = site_table_loader(data, schema, site_name)
    rows = len(table_for("all").frame)  # read and checked before anything connects
    console.print(f"site {escape(site_name)}: {rows} rows from {escape(data)}", highlight=False)
    own = (
        None
        if min_cell is None and release_extremes
        else DisclosureRules(min_cell=min_cell or 1, release_extremes=release_extremes)
    )
    state.mkdir(parents=True, exist_ok=True)
    ledger = None
    if budget_epsilon is not None:
        from fedcare.privacy.budget import BudgetLedger, PrivacyBudget

        budget = PrivacyBudget(budget_epsilon, budget_delta)
        ledger = BudgetLedger(state / "budget.sqlite", site=site_name, dataset=data, budget=budget)
    status = run_query_site(
        coordinator,
        site_name,
        ApprovalStore(state / "approvals.json"),
        table_for,
        tls=tls,
        own_rules=own,
        ledger=ledger,
        schema_sha256=None if schema is None else schema_digest(schema),
        give_up_after_s=give_up_after * 60.0,
        release_log=SiteReleaseLog(state / RELEASE_LOG, site_name, signing_key),
        log=lambda line: console.print(escape(line), highlight=False),
    )
    console.print(f"query {escape(status)}", highlight=False)
    if status != "finished":
        raise typer.Exit(code=2)
