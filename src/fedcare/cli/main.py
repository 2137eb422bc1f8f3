"""``fedcare``: run studies, inspect datasets, render reports.

Every expected failure (bad config, missing file, invalid data) exits with code 2 and
one clear line; tracebacks are for bugs only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedcare.cli.errors import friendly_errors
from fedcare.cli.help_style import hide_type_tags

if TYPE_CHECKING:
    from fedcare.sim.backends.choice import BackendChoice

hide_type_tags()

app = typer.Typer(
    name="fedcare",
    help="Federated learning across hospitals: studies in simulation, reports, datasets, and deployment (certs, coordinator, site agents, audit).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(
    help="List and describe the datasets that ship with fedcare.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")

# Logs and CI have no terminal width; give tables room instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def _run_config(
    config: Any, out: Path, backend: BackendChoice | None = None, *, resume: bool = False
) -> None:
    from fedcare.cli.progress import StudyProgress, findings_lines, results_table
    from fedcare.study.runner import StudyRunner

    on = f", rounds on the {backend.describe()}" if backend is not None and backend.is_ray else ""
    console.print(
        f"[bold]Study[/] {config.name}: dataset {config.dataset.name}, model {config.model.name}, "
        f"{len(config.seeds)} seed(s), {config.rounds} rounds{on}"
    )
    with StudyProgress(console) as progress:
        runner = StudyRunner(
            config,
            out,
            on_start=progress.on_start,
            on_round=progress.on_round,
            backend=backend,
            resume=resume,
        )
        _print_data_warnings(runner.dataset.extra.get("warnings"))
        outcome = runner.run()
    console.print(results_table(outcome.metrics))
    for line in findings_lines(outcome.metrics):
        console.print(line, highlight=False)
    console.print(
        f"Study folder: [bold]{outcome.directory}[/] (report.html, metrics.json, metrics.csv, models/)"
    )


def _print_data_warnings(warnings: object) -> None:
    """What the data checks noticed but let through (a detected delimiter, a one-class site)."""
    for warning in warnings if isinstance(warnings, list) else []:
        console.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)


@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Study folder to write.")] = Path("studies/heart-demo"),
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..N-1).")] = 5,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Override the number of rounds.")
    ] = None,
) -> None:
    """Run the embedded heart-disease study (4 hospitals, FLamby split) and write its report."""
    from fedcare.study.presets import heart_demo_config

    config = heart_demo_config(seeds=list(range(seeds)), rounds=rounds)
    _run_config(config, out)


@app.command()
@friendly_errors
def simulate(
    config: Annotated[Path, typer.Argument(help="Study YAML file.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Study folder (default: the config's 'output' or studies/NAME)."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="Where the federated rounds train: 'inprocess' (this process) or 'ray' "
            "(chunks of sites as Ray tasks; needs the ray extra: pip install 'fedcare\\[ray]')."
        ),
    ] = "inprocess",
    address: Annotated[
        str | None,
        typer.Option(
            help="With --backend ray: the address of an existing Ray cluster (what `ray start "
            "--head` prints). Default: a local Ray instance for this study."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted study from the checkpoints in its study folder "
            "(written after every round); refused if there are none or the config changed.",
        ),
    ] = False,
) -> None:
    """Run a study from a YAML config in the simulator."""
    from fedcare.sim.backends.choice import choose_backend
    from fedcare.study.config import load_config

    choice = choose_backend(backend, address)  # before the config: the cheaper mistake first
    cfg = load_config(config)
    target = out or Path(cfg.output or f"studies/{cfg.name}")
    _run_config(cfg, target, choice, resume=resume)


@app.command()
@friendly_errors
def report(
    study_dir: Annotated[Path, typer.Argument(help="A study folder containing metrics.json.")],
) -> None:
    """(Re)render report.html and metrics.csv from a study folder's metrics.json."""
    from fedcare.report.html import write_report

    if not (study_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{study_dir / 'metrics.json'}: no metrics.json in this folder")
    path = write_report(study_dir)
    console.print(f"Wrote [bold]{path}[/]")


@datasets_app.command("list")
@friendly_errors
def datasets_list() -> None:
    """Datasets that ship inside fedcare (no download ever)."""
    from fedcare.data.registry import dataset_names, describe_dataset

    table = Table(title="fedcare datasets")
    for col in ("name", "sites", "task", "features", "license"):
        table.add_column(col)
    for name in dataset_names():
        info = describe_dataset(name)
        sites = info.get("sites")
        table.add_row(
            name,
            str(len(sites)) if isinstance(sites, list) else "yours",
            str(info.get("task", "-")),
            str(info.get("num_features", "-")),
            str(info.get("license", "-")),
        )
    console.print(table)


@datasets_app.command("describe")
@friendly_errors
def datasets_describe(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. heart-disease.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Sites, rows, label balance, features and attribution of one dataset."""
    from fedcare.cli.describe import print_description
    from fedcare.data.registry import describe_dataset

    info = describe_dataset(name)
    if as_json:
        console.print_json(json.dumps(info, default=str))
        return
    print_description(console, info)


@datasets_app.command("schema")
@friendly_errors
def datasets_schema(
    file: Annotated[Path, typer.Argument(help="A site's CSV or Parquet file.")],
    target: Annotated[
        str | None, typer.Option(help="The label column (default: guessed, marked CHECK).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the draft here (default: print it).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file.")] = False,
    time: Annotated[
        str | None, typer.Option(help="Survival data: the follow-up time column (with --event).")
    ] = None,
    event: Annotated[
        str | None, typer.Option(help="Survival data: the event indicator column (with --time).")
    ] = None,
    entry: Annotated[
        str | None, typer.Option(help="Survival data, optional: the entry time (left truncation).")
    ] = None,
) -> None:
    """Draft a schema from one file, to check and edit (`datasets describe tabular` explains it)."""
    from fedcare.cli.errors import err_console
    from fedcare.core.errors import ConfigError
    from fedcare.data.schema_draft import SurvivalRoles, draft_schema
    from fedcare.data.table_file import read_table_file

    if (time is None) != (event is None) or (entry is not None and time is None):
        raise ConfigError("survival data needs both --time and --event (--entry is optional)")
    roles = SurvivalRoles(time, event, entry) if time is not None and event is not None else None

    read = read_table_file(file.stem, file)
    for warning in read.warnings:  # stderr: stdout may be the YAML itself
        err_console.print(
            f"[yellow]warning:[/] {escape(str(warning))}", highlight=False, soft_wrap=True
        )
    text = draft_schema(read.frame, str(file), target, roles)
    if out is None:
        console.print(text, markup=False, highlight=False, end="")
        return
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    out.write_text(text, encoding="utf-8")
    console.print(
        f"Wrote [bold]{escape(str(out))}[/]: check the lines marked CHECK, then name it as "
        "dataset.params.schema in the study YAML",
        highlight=False,
    )


# Deployment across hospitals: certificates, audit log, coordinator and site agents.
# Imported last: these modules take friendly_errors/console from this one.
from fedcare.cli.analyze import HELP as ANALYZE_HELP  # noqa: E402
from fedcare.cli.analyze import analyze, site_query  # noqa: E402
from fedcare.cli.audit import app as audit_app  # noqa: E402
from fedcare.cli.certs import app as certs_app  # noqa: E402
from fedcare.cli.deploy import coordinator_app, site_app  # noqa: E402
from fedcare.cli.he_keys import app as he_keys_app  # noqa: E402
from fedcare.cli.site_models import allow_model  # noqa: E402, F401 - registers commands

app.command("analyze", help=ANALYZE_HELP)(analyze)
app.add_typer(certs_app, name="certs")
app.add_typer(audit_app, name="audit")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(site_app, name="site")
site_app.command("query")(site_query)
site_app.add_typer(he_keys_app, name="he-keys")

if __name__ == "__main__":  # pragma: no cover
    app()
