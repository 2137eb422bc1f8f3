"""The report's section for a deployed study: each run and who took part in each round.

It reads metrics.json's top-level ``deployment`` block (written by
:mod:`fedcare.study.deployed`) and renders nothing for a simulated study. Consecutive rounds
with the same participation share one row, so a 200-round run with no incident is one line.
"""

from __future__ import annotations

import html
from typing import Any

DEPLOYMENT_KEY = "deployment"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _who(sites: Any) -> str:
    return ", ".join(_e(s) for s in sites) if sites else "—"


def _reasons(block: Any) -> str:
    if not isinstance(block, dict) or not block:
        return ""
    return "; ".join(f"{_e(site)} ({_e(reason)})" for site, reason in block.items())


def _round_rows(rounds: list[Any]) -> list[tuple[str, str, str, str]]:
    """(rounds, contributed, rejected, dropped), consecutive equal rounds merged."""
    rows: list[tuple[str, str, str, str]] = []
    first = last = None
    cells: tuple[str, str, str] | None = None
    for r in rounds:
        if not isinstance(r, dict):
            continue
        now = (_who(r.get("contributed")), _reasons(r.get("rejected")), _reasons(r.get("dropped")))
        if now == cells and last is not None and r.get("round") == last + 1:
            last = r.get("round")
            continue
        if cells is not None:
            rows.append((_span(first, last), *cells))
        first = last = r.get("round")
        cells = now
    if cells is not None:
        rows.append((_span(first, last), *cells))
    return rows


def _span(first: Any, last: Any) -> str:
    return _e(first) if first == last else f"{_e(first)}–{_e(last)}"


def _short_rounds(run: dict[str, Any]) -> str:
    """A warning naming each round of the run that ran short and the sites it missed."""
    short = [r for r in run.get("short_rounds") or [] if isinstance(r, dict)]
    if not short:
        return ""
    items = "".join(
        f"<li>round {_e(r.get('round'))}: {len(r.get('contributed') or [])} of "
        f"{len(r.get('sampled') or [])} sampled sites contributed; missing "
        f"{_reasons(r.get('missing'))}</li>"
        for r in short
    )
    return (
        f"<div class='alert'><strong>Run <code>{_e(run.get('run_id'))}</code>: "
        f"{len(short)} round(s) ran short</strong> (fewer sites contributed than were "
        f"sampled, so its model differs from the simulator's)<ul>{items}</ul></div>"
    )


def deployment_section(extra: dict[str, object]) -> str:
    block = extra.get(DEPLOYMENT_KEY)
    if not isinstance(block, dict) or not isinstance(block.get("runs"), list):
        return ""
    runs = [r for r in block["runs"] if isinstance(r, dict)]
    summary = "".join(
        f"<tr><td><code>{_e(r.get('run_id'))}</code></td><td>{_e(r.get('strategy') or '—')}</td>"
        f"<td class='num'>{_e(r.get('seed'))}</td><td>{_e(r.get('status'))}</td>"
        f"<td class='num'>{len(r.get('rounds') or [])}</td>"
        f"<td><code>{_e(str(r.get('plan_hash', ''))[:16])}</code></td>"
        f"<td>{_e(r.get('note', ''))}</td></tr>"
        for r in runs
    )
    details = []
    for r in runs:
        details.append(_short_rounds(r))
        rows = "".join(
            f"<tr><td class='num'>{span}</td><td>{who}</td><td>{rejected or '—'}</td>"
            f"<td>{dropped or '—'}</td></tr>"
            for span, who, rejected, dropped in _round_rows(list(r.get("rounds") or []))
        )
        if rows:
            details.append(
                f"<h3>Run <code>{_e(r.get('run_id'))}</code>: who took part</h3>"
                "<table><thead><tr><th class='num'>Rounds</th><th>Contributed</th>"
                "<th>Rejected updates (reason)</th><th>Dropped (reason)</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
    left_out = [x for x in block.get("not_deployed") or [] if isinstance(x, str)]
    not_deployed = (
        "<p class='note'><strong>Not deployed</strong> (in the study config, simulation "
        "only; named by the coordinator before the study started):</p><ul>"
        + "".join(f"<li>{_e(x)}</li>" for x in left_out)
        + "</ul>"
        if left_out
        else ""
    )
    return (
        "<h2>Deployment</h2><p class='note'>These results come from a deployed study: a "
        "coordinator and one site agent per hospital, each site training on its own rows. "
        "The strategies above summarise the finished runs (one per strategy and seed); "
        "rejected updates and dropped sites are left out of that round only.</p>"
        "<table><thead><tr><th>Run</th><th>Strategy</th><th class='num'>Seed</th>"
        "<th>Status</th><th class='num'>Rounds</th><th>Plan hash</th><th>Note</th></tr></thead>"
        f"<tbody>{summary}</tbody></table>" + not_deployed + "".join(details)
    )
