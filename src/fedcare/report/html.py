"""The study report: one self-contained HTML file that opens offline, on any machine.

Figures are embedded as base64 PNG data URIs and the CSS is inline; a Content-Security-
Policy forbids every network fetch and every script, so the file behaves the same on an
air-gapped hospital workstation as on the laptop that rendered it. Every string that
came from the study config or metrics.json passes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fedcare.report.analysis_html import write_analysis_report
from fedcare.report.analysis_results import is_analysis_metrics
from fedcare.report.deployment import DEPLOYMENT_KEY, deployment_section
from fedcare.report.findings import baseline_notes, findings
from fedcare.report.plots import (
    SeriesStyle,
    learning_curves_png,
    ordered,
    privacy_utility_png,
    site_accuracy_png,
    strategy_styles,
    worst_vs_mean_png,
)
from fedcare.report.results import (
    SplitInfo,
    Stat,
    Strategy,
    StudyInfo,
    StudyResults,
    load_results,
    write_metrics_csv,
)
from fedcare.report.sections import (
    communication_section,
    contributions_section,
    explanations_section,
    personalisation_section,
    privacy_section,
)
from fedcare.report.style import CSS
from fedcare.report.units import format_bytes

REPORT_FILE = "report.html"
CSV_FILE = "metrics.csv"
METRICS_FILE = "metrics.json"
_DASH = '<span class="na">—</span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _mean_std(stat: Stat) -> str:
    if math.isnan(stat.mean):
        return _DASH
    std = "" if math.isnan(stat.std) else f'<span class="pm"> ± {stat.std:.3f}</span>'
    return f"{stat.mean:.3f}{std}"


@dataclass(frozen=True)
class _Column:
    """One numeric table column; the best cell (within display precision) is highlighted."""

    header: str
    stat: Callable[[Strategy], Stat | None]
    lower_is_better: bool = False
    fmt: Callable[[Stat], str] = _mean_std
    tie: float = 5e-4  # half the last displayed digit, so visible ties are all highlighted


def _bytes(stat: Stat) -> str:
    return format_bytes(stat.mean)


def _traffic(strategy: Strategy) -> Stat | None:
    # Only federated strategies exchange models; pooled moves raw data, which is the point.
    if strategy.kind != "federated" or strategy.communication is None:
        return None
    return Stat(float(strategy.communication.total_bytes), math.nan)


def _best(values: list[float], column: _Column) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return None
    return min(finite) if column.lower_is_better else max(finite)


def _metric_name(key: str) -> str:
    text = " ".join("AUC" if word == "auc" else word for word in key.split("_"))
    return text[:1].upper() + text[1:]


def _metric_table(results: StudyResults, columns: list[_Column], caption: str = "") -> str:
    """A strategies x columns table; ``caption`` is trusted HTML written by this module."""
    styles = strategy_styles(results)
    strategies = ordered(results.strategies)
    stats = [[c.stat(s) for c in columns] for s in strategies]
    means = [[math.nan if stat is None else stat.mean for stat in row] for row in stats]
    best = [_best([row[i] for row in means], c) for i, c in enumerate(columns)]
    head = "".join(f'<th class="num">{_e(c.header)}</th>' for c in columns)
    body = []
    for strategy, row in zip(strategies, stats, strict=True):
        cells = []
        for stat, column, top in zip(row, columns, best, strict=True):
            if stat is None:
                cells.append(f'<td class="num">{_DASH}</td>')
                continue
            is_best = top is not None and abs(stat.mean - top) <= column.tie
            cls = "num best" if is_best else "num"
            cells.append(f'<td class="{cls}">{column.fmt(stat)}</td>')
        body.append(f"<tr>{_strategy_cell(strategy, styles)}{''.join(cells)}</tr>")
    return (
        f"<table>{f'<caption>{caption}</caption>' if caption else ''}"
        f"<thead><tr><th>Strategy</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


# SVG dash patterns for matplotlib's line styles, so a table row's swatch is the plot's line.
_DASHES = {"-": "", "--": "5 3", "-.": "6 2 1.5 2", ":": "1.5 2"}


def _swatch(style: SeriesStyle) -> str:
    dash = _DASHES.get(style.linestyle, "")
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        '<svg class="series" width="24" height="10" aria-hidden="true">'
        f'<line x1="1" y1="5" x2="23" y2="5" stroke="{style.colour}" stroke-width="2.5"'
        f"{dash_attr}/></svg>"
    )


def _strategy_cell(strategy: Strategy, styles: dict[str, SeriesStyle]) -> str:
    swatch = _swatch(styles[strategy.name])
    kind = f'<span class="kind kind-{strategy.kind}">{strategy.kind}</span>'
    return f'<th scope="row">{swatch}{_e(strategy.label)} {kind}</th>'


def _overall(key: str) -> Callable[[Strategy], Stat | None]:
    return lambda s: s.overall.get(key)


def _site_metric(site: str, metric: str) -> Callable[[Strategy], Stat | None]:
    return lambda s: s.per_site.get(site, {}).get(metric)


def _survival_results_table(results: StudyResults) -> str:
    columns = [_Column(site, _site_metric(site, "c_index")) for site in results.site_names]
    columns += [
        _Column("Mean of sites", _overall("mean_site_c_index")),
        _Column("Worst site", _overall("worst_site_c_index")),
        _Column("Within-site pairs", _overall("within_site_c_index")),
        _Column("Traffic", _traffic, lower_is_better=True, fmt=_bytes, tie=0.0),
    ]
    n = len(results.study.seeds)
    caption = (
        f"Harrell's C-index on each site's own test set, mean ± std over {n} seed"
        f"{'s' if n != 1 else ''}. Mean of sites: the mean of the sites' C-indices (FLamby's "
        "Fed-TCGA-BRCA metric). Within-site pairs: one C-index from all sites' summed "
        "concordance counts, which compare two patients of the same site only (no risk "
        "score leaves a site). Best value per column highlighted."
    )
    return _metric_table(results, columns, caption)


def _results_table(results: StudyResults) -> str:
    if results.study.task == "survival":
        return _survival_results_table(results)
    columns = [_Column(site, _site_metric(site, "accuracy")) for site in results.site_names]
    columns += [
        _Column("Mean of sites", _overall("mean_site_accuracy")),
        _Column("Worst site", _overall("worst_site_accuracy")),
        _Column("Pooled AUC", _overall("pooled_auc")),
        _Column("Traffic", _traffic, lower_is_better=True, fmt=_bytes, tie=0.0),
    ]
    n = len(results.study.seeds)
    caption = (
        f"Test accuracy on each site's own test set, mean ± std over {n} seed"
        f"{'s' if n != 1 else ''}. Traffic: model bytes uploaded and downloaded over a run "
        "(federated strategies). Best value per column highlighted."
    )
    return _metric_table(results, columns, caption)


def _unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def _detail_tables(results: StudyResults) -> str:
    overall = _unique(k for s in results.strategies for k in s.overall)
    tables = [
        "<h3>Overall</h3>",
        _metric_table(
            results,
            [_Column(_metric_name(k), _overall(k), "loss" in k) for k in overall],
            "Pooled metrics are computed over the union of all sites' test sets.",
        ),
    ]
    metrics = _unique(m for s in results.strategies for v in s.per_site.values() for m in v)
    for metric in (m for m in metrics if m != "accuracy"):
        columns = [
            _Column(site, _site_metric(site, metric), "loss" in metric)
            for site in results.site_names
        ]
        tables.append(f"<h3>Per-site {_e(_metric_name(metric))}</h3>")
        tables.append(_metric_table(results, columns))
    return "".join(tables)


def _param(value: object) -> str:
    if value is None:
        return _DASH
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return f"<code>{_e(json.dumps(value, separators=(', ', ': ')))}</code>"
    return _e(value)


def _hyperparameter_table(results: StudyResults) -> str:
    strategies = ordered(results.strategies)
    keys = _unique(k for s in strategies for k in s.hyperparameters)
    if not keys:
        return '<p class="note">No hyper-parameters were recorded.</p>'
    head = "".join(f"<th>{_e(s.label)}<br><code>{_e(s.name)}</code></th>" for s in strategies)
    rows = []
    for key in keys:
        cells = "".join(
            f"<td>{_param(s.hyperparameters[key])}</td>"
            if key in s.hyperparameters
            else "<td></td>"
            for s in strategies
        )
        rows.append(f'<tr><th scope="row"><code>{_e(key)}</code></th>{cells}</tr>')
    return (
        f"<table class='params'><thead><tr><th>Parameter</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _when(created: str) -> str:
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return created


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _split_text(split: SplitInfo) -> str:
    """Which seed split the rows, as the summary card says it."""
    seeds = sorted({s for _, s in split.split_seeds if s is not None})
    if split.source == "run seed":
        return "each run seed's own (split seeds " + ", ".join(map(str, seeds)) + ")"
    if split.source == "split column":
        return "declared by the schema's split column (same for every seed)"
    pinned_by = {"dataset.params.seed": "dataset.params.seed", "schema seed": "the schema's seed"}
    if split.source in pinned_by and len(seeds) == 1:
        return f"pinned by {pinned_by[split.source]} = {seeds[0]} (same for every seed)"
    return ", ".join(f"run seed {r} → split seed {s}" for r, s in split.split_seeds)


def _summary(results: StudyResults) -> str:
    study = results.study
    seeds = ", ".join(str(s) for s in study.seeds[:10]) + (", …" if len(study.seeds) > 10 else "")
    facts = [
        ("Dataset", study.dataset),
        ("Model", study.model),
        ("Task", study.task or "—"),
        ("Sites", str(len(results.sites))),
        ("Seeds", f"{len(study.seeds)} ({seeds})"),
        *([("Train/test split", _split_text(study.split))] if study.split else []),
        ("Rounds", str(study.rounds)),
        ("Wall time", _duration(study.wall_time_s)),
        ("Created", _when(study.created) if study.created else "—"),
    ]
    cards = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    found = "".join(f"<li>{_e(line)}</li>" for line in findings(results))
    listed = f'<ul class="findings">{found}</ul>' if found else ""
    return f'<dl class="summary">{cards}</dl>{_data_warnings(study)}{listed}'


def _data_warnings(study: StudyInfo) -> str:
    """What the data checks warned about: the results stand, but read them with this."""
    if not study.data_warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in study.data_warnings)
    return f"<div class='alert'><strong>Data warnings</strong><ul>{items}</ul></div>"


def _results_note(results: StudyResults) -> str:
    """What each kind of row in the results table is, worded from this study's numbers."""
    notes = "\n".join(f"<em>{_e(k)}</em>: {_e(v)}" for k, v in baseline_notes(results))
    return f'<p class="note">{notes}</p>'


def _curves_caption(results: StudyResults) -> str:
    """Describe only the baselines the figure draws (deployed studies have none)."""
    kinds = {s.kind for s in results.strategies}
    parts = ["Mean over seeds with a ±1 std band."]
    trained = [k for k in ("local", "pooled") if k in kinds]
    if trained:
        names = " and ".join(trained)
        plural = "s" if len(trained) > 1 else ""
        parts.append(
            f"Dashed grey line{plural}: the {names} baseline{plural}, plotted against "
            "equivalent training rounds."
        )
    if "majority" in kinds:
        parts.append("Dotted grey line: the majority class (no training).")
    return " ".join(parts)


def _sites_table(results: StudyResults) -> str:
    rows = "".join(
        f'<tr><th scope="row">{_e(s.name)}</th><td class="num">{s.num_train}</td>'
        f'<td class="num">{s.num_test}</td></tr>'
        for s in results.sites
    )
    return (
        "<table class='sites'><thead><tr><th>Site</th><th class='num'>Train</th>"
        f"<th class='num'>Test</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    # Show every figure at the same scale (about 108 CSS px per inch) so their fonts match;
    # the PNG's pixel width sits at bytes 16-20 of its IHDR chunk.
    width = round(int.from_bytes(png[16:20], "big") * 0.72)
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{_e(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _privacy_figure(results: StudyResults) -> str:
    png = privacy_utility_png(results)
    if png is None:
        return ""
    return _figure(
        png,
        "Mean site accuracy against epsilon for the differentially private strategies",
        "Accuracy against the privacy spent; dashed lines are federated runs without DP.",
    )


def _figures(results: StudyResults) -> str:
    metric, name = (
        ("c_index", "C-index") if results.study.task == "survival" else ("accuracy", "accuracy")
    )
    parts = [
        _figure(
            site_accuracy_png(results, metric),
            f"Grouped bar chart of per-site {name} for each strategy",
            f"{name[0].upper()}{name[1:]} on each site's own test set; error bars are the std "
            "over seeds.",
        )
    ]
    if any(s.curves and s.curves.series for s in results.strategies):
        parts.insert(
            0,
            _figure(
                learning_curves_png(results),
                f"Learning curves: mean site {name} and pooled loss per round",
                _curves_caption(results),
            ),
        )
    fairness = worst_vs_mean_png(results)
    if fairness is not None:
        parts.append(
            _figure(
                fairness,
                "Scatter plot of worst-site accuracy against mean site accuracy",
                "Points near the dotted line treat every site alike; points below it leave "
                "one site behind.",
            )
        )
    return "".join(parts)


def _attribution(study: StudyInfo) -> list[str]:
    """Data credits the dataset's donors ask for, wherever the config carries them."""
    sources: list[dict[str, object]] = [study.config]
    dataset = study.config.get("dataset")
    if isinstance(dataset, dict):
        sources.insert(0, dataset)
    keys = ("attribution", "citation", "source", "license")
    found = [str(src[k]) for src in sources for k in keys if isinstance(src.get(k), str | int)]
    return _unique(found)


def _footer(results: StudyResults) -> str:
    study = results.study
    lines = [f"<p><strong>Data:</strong> {_e(text)}</p>" for text in _attribution(study)]
    unshown = [k for k in results.extra if k != DEPLOYMENT_KEY]
    if unshown:
        others = ", ".join(_e(k) for k in unshown)
        lines.append(f"<p>metrics.json also holds sections not shown here: {others}.</p>")
    version = f" {_e(study.fedcare_version)}" if study.fedcare_version else ""
    lines.append(f"<p>Generated by fedcare{version}. Full metrics: {CSV_FILE}, {METRICS_FILE}.</p>")
    return f"<footer>{''.join(lines)}</footer>"


def render_report(results: StudyResults) -> str:
    """Render the study as one self-contained HTML document."""
    study = results.study
    title = f"Study report: {study.name}"
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><main>
<header><p class="eyebrow">fedcare study report</p><h1>{_e(study.name)}</h1>
<p class="lede">{_e(study.dataset)} · {_e(study.model)} · {len(results.sites)} sites ·
{len(results.strategies)} strategies</p></header>
{_summary(results)}
<h2>Results</h2>
{_results_note(results)}
{_results_table(results)}
<h2>Figures</h2>
{_figures(results)}
{personalisation_section(results)}
{explanations_section(results)}
{contributions_section(results.extra)}
{communication_section(results)}
{privacy_section(results)}
{_privacy_figure(results)}
{deployment_section(results.extra)}
<h2>All metrics</h2>
{_detail_tables(results)}
<h2>Sites</h2>
{_sites_table(results)}
<h2>Hyper-parameters</h2>
{_hyperparameter_table(results)}
{_footer(results)}
</main></body></html>
"""


def write_report(study_dir: Path) -> Path:
    """Read ``study_dir/metrics.json``; write ``report.html`` and ``metrics.csv`` beside it."""
    if is_analysis_metrics(study_dir / METRICS_FILE):  # an analysis folder has its own report
        return write_analysis_report(study_dir)
    results = load_results(study_dir / METRICS_FILE)
    write_metrics_csv(results, study_dir / CSV_FILE)
    report = study_dir / REPORT_FILE
    report.write_text(render_report(results), encoding="utf-8")
    return report
