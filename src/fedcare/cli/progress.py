"""Live progress bars and the closing results table for studies."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fedcare.report.findings import findings
from fedcare.report.results import parse_results
from fedcare.report.units import format_bytes
from fedcare.sim.engine import RoundRecord


class StudyProgress:
    """One bar per (strategy, seed), advanced after every round.

    The live display starts with the first bar: a study that fails before training (a
    missing file, invalid data) leaves no empty display behind, which off a terminal is a
    blank line printed before the error.
    """

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[job]:<22}[/] seed {task.fields[seed]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[acc]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[tuple[str, int], TaskID] = {}
        self._started = False

    def __enter__(self) -> StudyProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.progress.stop()

    def on_start(self, job: str, seed: int, rounds: int) -> None:
        if not self._started:
            self.progress.start()
            self._started = True
        self._tasks[(job, seed)] = self.progress.add_task(
            "", total=rounds, job=job, seed=seed, acc="acc  -  "
        )

    def on_round(self, job: str, seed: int, record: RoundRecord) -> None:
        # The headline per-site metric: accuracy, or a survival model's C-index.
        survival = "c_index" in next(iter(record.site_metrics.values()), {})
        metric, name = ("c_index", "C-index") if survival else ("accuracy", "acc")
        value = f"{record.mean_site(metric):.3f}" if record.site_metrics else "  -  "
        text = f"{name} {value}"
        self.progress.update(self._tasks[(job, seed)], advance=1, acc=text)


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.3f}±{stat['std']:.3f}"


def results_table(metrics: dict[str, Any]) -> Table:
    sites = [s["name"] for s in metrics["sites"]]
    survival = metrics["study"].get("task") == "survival"
    metric, title = ("c_index", "C-index") if survival else ("accuracy", "accuracy")
    table = Table(
        title=f"{metrics['study']['name']}: test {title} per site (mean ± std over seeds)"
    )
    table.add_column("strategy", style="bold", no_wrap=True)
    for site in sites:
        table.add_column(site, justify="right")
    table.add_column("mean of sites", justify="right", style="cyan")
    table.add_column("worst site", justify="right")
    table.add_column("within-site pairs" if survival else "pooled AUC", justify="right")
    table.add_column("traffic", justify="right")
    for entry in metrics["strategies"]:
        overall = entry["overall"]
        traffic = _traffic(entry)
        table.add_row(
            entry["name"],
            *[_fmt(entry["per_site"][s][metric]) for s in sites],
            _fmt(overall[f"mean_site_{metric}"]),
            _fmt(overall[f"worst_site_{metric}"]),
            _fmt(overall["within_site_c_index" if survival else "pooled_auc"]),
            traffic,
        )
    return table


def _traffic(entry: dict[str, Any]) -> str:
    """Model bytes up and down over a run, as the report shows them; only federated runs
    move models (pooled moves rows, which is what federation avoids)."""
    comm = entry.get("communication")
    if entry.get("kind") != "federated" or not comm:
        return "-"
    return format_bytes(comm.get("upload_bytes", 0) + comm.get("download_bytes", 0))


def findings_lines(metrics: dict[str, Any]) -> list[str]:
    """The report's findings (best strategy, majority-class floor, pooled), as plain lines."""
    return findings(parse_results(metrics))
