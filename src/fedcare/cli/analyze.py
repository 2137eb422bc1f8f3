"""``fedcare analyze analysis.yaml``: federated statistics and survival analysis, simulated.

The same YAML runs deployed as a ``query`` job; here every site's rows stay in their own
table and only what each site's disclosure rules release is combined.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import friendly_errors

# Logs and CI have no terminal width; give lines room (as the other commands do).
console = Console(width=None if sys.stdout.isatty() else 160)

HELP = """\
Run an analysis file in the simulator and write its study folder (metrics.json,
report.html, plan.json with the plan hash owners approve, config.yaml).

Example analysis.yaml:

    name: brca-survival
    dataset: {name: tcga-brca}        # or tabular with schema + files, as in a study
    split: all                        # train, test or all rows of each site
    disclosure: {min_cell: 5}         # counts below 5 never leave a site
    analyses:
      - {kind: describe, params: {variables: [age]}}
      - {kind: km}
      - {kind: cox, params: {covariates: [age]}}
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
