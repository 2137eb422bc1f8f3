"""Study figures as PNG bytes, drawn on bare ``Figure`` objects with the Agg canvas.

pyplot is never imported: its global figure registry leaks memory in long-running
processes (the dashboard) and is not thread-safe. Each strategy keeps one colour across
every figure so a reader can follow it from chart to chart.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedcare.report.results import Stat, Strategy, StudyResults

# Baselines in neutral greys; federated strategies from the Okabe-Ito palette, which stays
# distinguishable under the common forms of colour blindness.
_BASELINE_COLOURS = {"local": "#9a9a9a", "pooled": "#3d3d3d"}
_FEDERATED_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
_KIND_ORDER = {"local": 0, "pooled": 1, "federated": 2}
_DPI = 150


def ordered(strategies: Sequence[Strategy]) -> list[Strategy]:
    """Baselines first (local, pooled), then federated strategies in file order."""
    return sorted(strategies, key=lambda s: _KIND_ORDER[s.kind])


def strategy_colours(results: StudyResults) -> dict[str, str]:
    """Map strategy name to a hex colour; the same study always gets the same colours."""
    colours: dict[str, str] = {}
    federated = 0
    for strategy in results.strategies:
        if strategy.kind in _BASELINE_COLOURS:
            colours[strategy.name] = _BASELINE_COLOURS[strategy.kind]
        else:
            colours[strategy.name] = _FEDERATED_COLOURS[federated % len(_FEDERATED_COLOURS)]
            federated += 1
    return colours


def _text(label: str) -> str:
    # Labels come from the config: '$' would switch on mathtext (and can fail to parse) and
    # a leading '_' hides the entry from the legend.
    label = label.replace("$", r"\$")
    return "\u200b" + label if label.startswith("_") else label


def _style(ax: Axes, *, ylabel: str, xlabel: str = "") -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e3e3e3", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches itself to fig, so savefig renders with Agg
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _curve_panel(
    ax: Axes, results: StudyResults, series: str, colours: dict[str, str], title: str
) -> None:
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    drawn = False
    for strategy in ordered(results.strategies):
        curve = strategy.curves.series.get(series) if strategy.curves else None
        if strategy.curves is None or curve is None:
            continue
        rounds = np.asarray(strategy.curves.round, dtype=float)
        mean = np.asarray(curve.mean, dtype=float)
        style = "--" if strategy.kind != "federated" else "-"
        colour = colours[strategy.name]
        ax.plot(rounds, mean, style, color=colour, linewidth=1.6, label=_text(strategy.label))
        if curve.std:
            std = np.asarray(curve.std, dtype=float)
            ax.fill_between(rounds, mean - std, mean + std, color=colour, alpha=0.10, lw=0)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)


def learning_curves_png(results: StudyResults) -> bytes:
    """Mean site accuracy and pooled loss per round, mean line with a ±1 std band over seeds."""
    colours = strategy_colours(results)
    fig, (acc_ax, loss_ax) = _new_figure(10, 3.6, ncols=2)
    _curve_panel(acc_ax, results, "mean_site_accuracy", colours, "Mean site accuracy")
    _curve_panel(loss_ax, results, "pooled_loss", colours, "Pooled test loss")
    _style(acc_ax, ylabel="accuracy", xlabel="round")
    _style(loss_ax, ylabel="cross-entropy", xlabel="round")
    handles, labels = acc_ax.get_legend_handles_labels()
    if not handles:
        handles, labels = loss_ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6))
    return _png(fig)


def _mean_std(stat: Stat | None) -> tuple[float, float]:
    if stat is None:
        return math.nan, 0.0
    return stat.mean, 0.0 if math.isnan(stat.std) else stat.std


def site_accuracy_png(results: StudyResults, metric: str = "accuracy") -> bytes:
    """Grouped bars per site, one bar per strategy, error bars = std over seeds."""
    colours = strategy_colours(results)
    strategies = ordered(results.strategies)
    sites = results.site_names
    fig, (ax,) = _new_figure(max(6.0, 1.6 * len(sites) + 2.5), 3.8)
    width = 0.8 / len(strategies)
    x = np.arange(len(sites), dtype=float)
    for i, strategy in enumerate(strategies):
        stats = [_mean_std(strategy.per_site.get(site, {}).get(metric)) for site in sites]
        ax.bar(
            x + (i - (len(strategies) - 1) / 2) * width,
            [m for m, _ in stats],
            width * 0.92,
            yerr=[s for _, s in stats],
            color=colours[strategy.name],
            error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#222222"},
            label=_text(strategy.label),
        )
    ax.set_xticks(x, [_text(f"{s.name}\n(n test={s.num_test})") for s in results.sites])
    ax.set_ylim(0, 1.0)
    _style(ax, ylabel=metric.replace("_", " "))
    ax.set_title(f"Per-site {metric.replace('_', ' ')}", loc="left", fontsize=10, weight="bold")
    fig.legend(loc="outside lower center", ncols=min(len(strategies), 6))
    return _png(fig)


def worst_vs_mean_png(results: StudyResults) -> bytes | None:
    """Worst-site against mean-of-sites accuracy; ``None`` when no strategy recorded both."""
    colours = strategy_colours(results)
    points = [
        (s, s.overall["mean_site_accuracy"], s.overall["worst_site_accuracy"])
        for s in ordered(results.strategies)
        if "mean_site_accuracy" in s.overall and "worst_site_accuracy" in s.overall
    ]
    points = [p for p in points if math.isfinite(p[1].mean) and math.isfinite(p[2].mean)]
    if not points:
        return None
    fig, (ax,) = _new_figure(6.4, 4.6)
    for strategy, mean_stat, worst_stat in points:
        (mx, sx), (wy, sy) = _mean_std(mean_stat), _mean_std(worst_stat)
        ax.errorbar(
            mx,
            wy,
            xerr=sx,
            yerr=sy,
            fmt="s" if strategy.kind != "federated" else "o",
            color=colours[strategy.name],
            ms=8,
            capsize=2,
            label=_text(strategy.label),
        )
    lo = min(min(p[1].mean, p[2].mean) for p in points) - 0.03
    hi = max(max(p[1].mean, p[2].mean) for p in points) + 0.03
    ax.plot([lo, hi], [lo, hi], ":", color="#999999", linewidth=1)
    ax.text(hi, hi, "worst site = mean ", ha="right", va="bottom", fontsize=8, color="#777777")
    ax.legend(loc="upper left", frameon=False, fontsize=8.5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _style(ax, ylabel="worst-site accuracy", xlabel="mean site accuracy")
    ax.set_title("Fairness across sites", loc="left", fontsize=10, fontweight="bold")
    return _png(fig)


def privacy_utility_png(results: StudyResults) -> bytes | None:
    """Accuracy against epsilon for the DP strategies; non-private federated runs as lines."""
    private = [
        s
        for s in results.strategies
        if isinstance(s.extra.get("privacy"), dict) and "mean_site_accuracy" in s.overall
    ]
    if not private:
        return None
    points = []
    for s in private:
        block = s.extra["privacy"]
        eps = block.get("epsilon", {}) if isinstance(block, dict) else {}
        mean_eps = eps.get("mean") if isinstance(eps, dict) else None
        if isinstance(mean_eps, int | float) and math.isfinite(mean_eps):
            points.append((float(mean_eps), s))
    if not points:
        return None
    points.sort(key=lambda p: p[0])
    fig, (ax,) = _new_figure(6.4, 4.2)
    xs = [p[0] for p in points]
    ys = [_mean_std(p[1].overall["mean_site_accuracy"]) for p in points]
    ax.errorbar(
        xs, [y for y, _ in ys], yerr=[e for _, e in ys], fmt="o-", color="#1f5f8b", capsize=2
    )
    for x, (y, _), (_, s) in zip(xs, ys, points, strict=True):
        ax.annotate(
            _text(s.label), (x, y), textcoords="offset points", xytext=(4, -12), fontsize=7.5
        )
    reference = [
        s
        for s in results.strategies
        if s.kind == "federated" and "privacy" not in s.extra and "mean_site_accuracy" in s.overall
    ]
    colours = strategy_colours(results)
    for s in reference[:4]:
        y, _ = _mean_std(s.overall["mean_site_accuracy"])
        ax.axhline(
            y, linestyle="--", linewidth=1, color=colours[s.name], label=_text(s.label) + " (no DP)"
        )
    if reference:
        ax.legend(loc="lower right", frameon=False, fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)  # room for the labels under the points
    _style(ax, ylabel="mean site accuracy", xlabel="epsilon spent (log scale)")
    ax.set_title("Privacy against accuracy", loc="left", fontsize=10, fontweight="bold")
    return _png(fig)
