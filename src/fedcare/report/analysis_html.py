"""The report of an analysis (``fedcare analyze``, a deployed query): one offline HTML file.

A summary (dataset, split, sites and rows, the plan hash the owners approved, the
disclosure rules), then each analysis in the plan's order: a kind with a renderer in
:data:`RENDERERS` (table one, Kaplan-Meier, Cox, log-rank, ...) draws its own section, any
other is shown as its tables. Last, what was suppressed or noised and why, and every
release (site, question, arrays, what it withheld). Same CSS and Content-Security-Policy
as the training report: nothing is fetched, no script runs.
"""

from __future__ import annotations

from pathlib import Path

from fedcare.report.analysis_results import (
    AnalysisEntry,
    AnalysisResults,
    load_analysis_results,
)
from fedcare.report.analysis_sections import RENDERERS, _e, generic_section
from fedcare.report.style import CSS

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"


def _notes(entry: AnalysisEntry) -> str:
    if not entry.notes:
        return ""
    items = "".join(f"<li>{_e(n)}</li>" for n in entry.notes)
    return f"<ul class='note'>{items}</ul>"


def _section(entry: AnalysisEntry) -> str:
    body = RENDERERS.get(entry.kind, generic_section)(entry)
    return f"<h2 id='{_e(entry.id)}'>{_e(entry.title)} <small>({_e(entry.id)})</small></h2>{body}{_notes(entry)}"


def _summary(results: AnalysisResults) -> str:
    rows = sum(s.rows for s in results.sites)
    noise = results.noise
    noise_text = (
        "none"
        if noise is None
        else f"{noise.get('mechanism')} ε={noise.get('epsilon')} δ={noise.get('delta')} per release"
    )
    facts = [
        ("Dataset", results.dataset),
        ("Rows", f"{results.split} ({rows:,})"),
        ("Sites", str(len(results.sites))),
        ("Min cell", str(results.min_cell)),
        ("Min/max released", "yes" if results.release_extremes else "no"),
        ("Noise", noise_text),
        ("Secure sum", results.secure),
        ("Run", results.mode),
    ]
    cards = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    warned = "".join(f"<li>{_e(w)}</li>" for w in results.data_warnings)
    warnings = (
        f"<div class='alert'><strong>Data warnings</strong><ul>{warned}</ul></div>"
        if warned
        else ""
    )
    return (
        f'<dl class="summary">{cards}</dl>{warnings}'
        f'<p class="note">Plan hash (what each data owner approved): '
        f"<code>{_e(results.plan_hash)}</code></p>"
    )


def _spent(results: AnalysisResults, site: str) -> str:
    if site not in results.privacy_spent:
        return ""
    epsilon, delta = results.privacy_spent[site]
    return f'<td class="num">ε = {epsilon:g}, δ = {delta:g}</td>'


def _sites(results: AnalysisResults) -> str:
    rows = "".join(
        f'<tr><th scope="row">{_e(s.name)}</th><td class="num">{s.rows:,}</td>'
        f'<td class="num">{s.min_cell}</td><td>{"yes" if s.release_extremes else "no"}</td>'
        f"{_spent(results, s.name)}</tr>"
        for s in results.sites
    )
    spent = "<th class='num'>Privacy spent</th>" if results.privacy_spent else ""
    return (
        "<table class='sites'><thead><tr><th>Site</th><th class='num'>Rows</th>"
        f"<th class='num'>Min cell applied</th><th>Min/max released</th>{spent}</tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _withheld(results: AnalysisResults) -> str:
    noised = [f"{r.site}: {r.analysis}/{r.step}: {n}" for r in results.releases for n in r.noise]
    if not results.suppressed and not noised:
        return (
            "<p class='note'>Nothing was suppressed or noised: every released count was at "
            f"least the minimum cell size ({results.min_cell}) at its site.</p>"
        )
    items = "".join(f"<li>{_e(line)}</li>" for line in [*results.suppressed, *noised])
    return f"<ul>{items}</ul>"


def _releases(results: AnalysisResults) -> str:
    rows = "".join(
        f"<tr><td class='num'>{r.question}</td><td>{_e(r.analysis)}</td><td>{_e(r.step)}</td>"
        f"<td>{_e(r.site)}</td><td>{_e(', '.join(f'{k} {list(v)}' for k, v in r.values.items()))}</td>"
        f"<td class='num'>{len(r.suppressed)}</td></tr>"
        for r in results.releases
    )
    return (
        "<table><thead><tr><th class='num'>Question</th><th>Analysis</th><th>Step</th>"
        "<th>Site</th><th>Arrays released (shape)</th><th class='num'>Suppressed</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )


def render_analysis_report(results: AnalysisResults) -> str:
    """The analysis as one self-contained HTML document."""
    title = f"Analysis report: {results.name}"
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    sections = "".join(_section(entry) for entry in results.analyses)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><main>
<header><p class="eyebrow">fedcare analysis report</p><h1>{_e(results.name)}</h1>
<p class="lede">{_e(results.dataset)} · {len(results.sites)} sites ·
{len(results.analyses)} analyses · no row left its site</p></header>
{_summary(results)}
{sections}
<h2>Suppressed or noised, and why</h2>
{_withheld(results)}
<h2>Sites</h2>
{_sites(results)}
<h2>Releases</h2>
<p class="note">Every answer a site released, in order; each is also an audit-log entry in
a deployed query.</p>
{_releases(results)}
<footer><p>Generated by fedcare {_e(results.fedcare_version)} on {_e(results.created)}.
Full numbers: {METRICS_FILE}.</p></footer>
</main></body></html>
"""


def write_analysis_report(study_dir: Path) -> Path:
    """Read ``study_dir/metrics.json`` (an analysis's); write ``report.html`` beside it."""
    results = load_analysis_results(study_dir / METRICS_FILE)
    report = study_dir / REPORT_FILE
    report.write_text(render_analysis_report(results), encoding="utf-8")
    return report
