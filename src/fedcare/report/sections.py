"""Report sections for what later capabilities add to metrics.json: personalisation gains,
explanations (feature importance). Each renders nothing when its data is absent."""

from __future__ import annotations

import html
from typing import Any

from fedcare.report.results import Strategy, StudyResults
from fedcare.report.units import format_bytes


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _mean(block: Any) -> Any:
    return block.get("mean") if isinstance(block, dict) else None


def personalisation_section(results: StudyResults) -> str:
    rows = []
    for strategy in results.strategies:
        block = strategy.extra.get("personalisation")
        if not isinstance(block, dict):
            continue
        for site in results.sites:
            cell = block.get(site.name, {})
            if not isinstance(cell, dict):
                continue
            gain_local = cell.get("gain_vs_local")
            worse = isinstance(gain_local, int | float) and gain_local < 0
            rows.append(
                f"<tr><td>{_e(strategy.label or strategy.name)}</td><td>{_e(site.name)}</td>"
                f"<td class='num'>{_num(_mean(cell.get('personal')))}</td>"
                f"<td class='num'>{_num(_mean(cell.get('global')))}</td>"
                f"<td class='num'>{_num(_mean(cell.get('local')))}</td>"
                f"<td class='num'>{_num(cell.get('gain_vs_global'), signed=True)}</td>"
                f"<td class='num{' worse' if worse else ''}'>{_num(gain_local, signed=True)}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h2>Personalisation</h2><p class='note'>Each site's personalised model on its own test "
        "set, against the shared global model and against training alone (mean over seeds).</p>"
        "<table><thead><tr><th>Strategy</th><th>Site</th><th class='num'>personalised</th>"
        "<th class='num'>global</th><th class='num'>local only</th><th class='num'>gain vs global</th>"
        "<th class='num'>gain vs local</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _best_with(results: StudyResults, key: str) -> Strategy | None:
    candidates = [s for s in results.strategies if isinstance(s.extra.get(key), dict)]
    federated = [s for s in candidates if s.kind == "federated"] or candidates
    if not federated:
        return None

    def score(s: Strategy) -> float:
        stat = s.overall.get("mean_site_accuracy")
        return stat.mean if stat is not None and stat.mean == stat.mean else 0.0

    return max(federated, key=score)


def explanations_section(results: StudyResults) -> str:
    strategy = _best_with(results, "explanations")
    if strategy is None:
        return ""
    block = strategy.extra["explanations"]
    if not isinstance(block, dict):
        return ""
    features = block.get("features") or []
    drops = _mean(block.get("accuracy_drop")) or []
    stds = (block.get("accuracy_drop") or {}).get("std") or [0.0] * len(drops)
    if not features or len(features) != len(drops):
        return ""
    top = max((abs(d) for d in drops), default=0.0) or 1.0
    order = sorted(range(len(features)), key=lambda i: -drops[i])
    rows = "".join(
        f"<tr><td>{_e(features[i])}</td><td class='num'>{drops[i]:+.3f} ± {stds[i]:.3f}</td>"
        f"<td><span class='bar' style='width:{max(drops[i], 0) / top * 100:.0f}%'></span></td></tr>"
        for i in order
    )
    return (
        f"<h2>Explanations</h2><p class='note'>Permutation feature importance of "
        f"<strong>{_e(strategy.label or strategy.name)}</strong>: the fall in accuracy when one "
        "feature is shuffled among each site's own test rows; sites share only counts, summed "
        "here (mean ± std over seeds).</p><table class='importance'><thead><tr><th>Feature</th>"
        "<th class='num'>accuracy drop</th><th></th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )


def contributions_section(extra: dict[str, object]) -> str:
    """Each site's contribution (Shapley, leave-one-out) from the top-level metrics section."""
    block = extra.get("contributions")
    if not isinstance(block, dict) or not isinstance(block.get("sites"), dict):
        return ""
    columns = [
        ("shapley_exact", "Shapley (exact)"),
        ("shapley_monte_carlo", "Shapley (Monte-Carlo)"),
        ("shapley_stderr", "± stderr"),
        ("leave_one_out", "leave-one-out"),
    ]
    sites: dict[str, Any] = block["sites"]
    present = [c for c in columns if any(isinstance(v, dict) and c[0] in v for v in sites.values())]
    head = "".join(f"<th class='num'>{_e(label)}</th>" for _, label in present)
    rows = "".join(
        f"<tr><td>{_e(site)}</td>"
        + "".join(
            f"<td class='num'>{_num(values.get(key), signed=key != 'shapley_stderr')}</td>"
            for key, _ in present
        )
        + "</tr>"
        for site, values in sites.items()
        if isinstance(values, dict)
    )
    note = (
        f"Utility of a coalition: {_e(block.get('utility', 'mean site test accuracy'))}. "
        f"All sites: {_num(block.get('all_sites_utility'))}; no site (initial model): "
        f"{_num(block.get('empty_utility'))}; coalitions trained: {_e(block.get('coalitions_evaluated', '—'))}."
    )
    return (
        "<h2>Contribution of each site</h2>"
        f"<p class='note'>{note}</p><table><thead><tr><th>Site</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def communication_section(results: StudyResults) -> str:
    """Bytes on the wire: each federated strategy's upload per site and round."""
    strategies = [
        s
        for s in results.strategies
        if s.kind == "federated" and s.communication and s.communication.site_upload_per_round
    ]
    if not strategies:
        return ""
    head = "".join(f"<th class='num'>{_e(site.name)}</th>" for site in results.sites)
    rows = []
    for s in strategies:
        comm = s.communication
        if comm is None:
            continue
        cells = "".join(
            f"<td class='num'>{format_bytes(comm.site_upload_per_round.get(site.name))}</td>"
            for site in results.sites
        )
        rows.append(
            f"<tr><td>{_e(s.label or s.name)}</td>{cells}"
            f"<td class='num'>{format_bytes(comm.upload_bytes)}</td>"
            f"<td class='num'>{format_bytes(comm.download_bytes)}</td></tr>"
        )
    return (
        "<h2>Communication</h2><p class='note'>Upload per site and round (mean over rounds and "
        "seeds) and the run's totals.</p><table><thead><tr><th>Strategy</th>"
        f"{head}<th class='num'>upload total</th><th class='num'>download total</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def privacy_section(results: StudyResults) -> str:
    """Each strategy's protection and the privacy it spent (epsilon at its delta), then
    sample-level DP-SGD's epsilon at every site."""
    rows = []
    for s in results.strategies:
        hp = s.hyperparameters
        block = s.extra.get("privacy")
        dp, secure = hp.get("privacy.dp"), hp.get("privacy.secure")
        if not (dp or secure):
            continue
        eps = block.get("epsilon") if isinstance(block, dict) else None
        eps_text = _num(_mean(eps)) if eps else "—"
        rows.append(
            f"<tr><td>{_e(s.label)}</td><td>{_e(dp or 'no DP')}</td><td>{_e(secure or '—')}</td>"
            f"<td class='num'>{eps_text}</td><td class='num'>{_e(hp.get('privacy.delta', '—'))}</td>"
            f"<td class='num'>{_num(_mean(_stat_dict(s.overall.get('mean_site_accuracy'))))}</td></tr>"
        )
    sample = _sample_privacy_table(results)
    if not rows and not sample:
        return ""
    client = (
        "<p class='note'>Epsilon is the client-level privacy spent by the end "
        "of training (each hospital's whole contribution is protected), accounted with "
        "dp-accounting at the stated delta. Secure aggregation and encryption hide each "
        "hospital's update from the coordinator; they add no epsilon.</p>"
        "<table><thead><tr><th>Strategy</th><th>Differential privacy</th><th>Hidden by</th>"
        "<th class='num'>ε spent</th><th class='num'>δ</th><th class='num'>mean site acc.</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else ""
    )
    return "<h2>Privacy</h2>" + client + sample


def _sample_privacy_table(results: StudyResults) -> str:
    """Sample-level DP-SGD: one line per strategy and site, the worst site highlighted."""
    rows = []
    for s in results.strategies:
        block = s.extra.get("sample_privacy")
        if not isinstance(block, dict) or not isinstance(block.get("epsilon"), dict):
            continue
        worst = block.get("worst_site")
        zs, qs = block.get("noise_multiplier") or {}, block.get("sampling_rate") or {}
        for site, eps in block["epsilon"].items():
            mark = site == worst
            badge = " <span class='kind'>worst</span>" if mark else ""
            std = eps.get("std") if isinstance(eps, dict) else None
            spread = f" <span class='pm'>± {std:.3f}</span>" if isinstance(std, float) else ""
            rows.append(
                f"<tr><td>{_e(s.label or s.name)}</td><td>{_e(site)}{badge}</td>"
                f"<td class='num{' worse' if mark else ''}'>{_num(_mean(eps))}{spread}</td>"
                f"<td class='num'>{_e(block.get('delta', '—'))}</td>"
                f"<td class='num'>{_num(zs.get(site))}</td>"
                f"<td class='num'>{_num(qs.get(site))}</td></tr>"
            )
    if not rows:
        return ""
    return (
        "<h3>Sample-level DP-SGD</h3><p class='note'>Each site trains with DP-SGD (per-row "
        "clipping, Gaussian noise, Poisson batches), which protects every patient record "
        "within the site; each site's epsilon (mean ± std over seeds, accounted with "
        "dp-accounting at δ) covers its own rows, and the study's is the worst site's. "
        "z is the site's noise multiplier, q its sampling rate (batch size / rows).</p>"
        "<table><thead><tr><th>Strategy</th><th>Site</th><th class='num'>ε spent</th>"
        "<th class='num'>δ</th><th class='num'>z</th><th class='num'>q</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )


def _stat_dict(stat: Any) -> Any:
    """A report Stat as the {'mean': ...} mapping _mean reads."""
    return {"mean": stat.mean} if stat is not None and hasattr(stat, "mean") else None
