"""Study figures as PNG bytes, drawn on bare ``Figure`` objects with the Agg canvas.

pyplot is never imported: its global figure registry leaks memory in long-running
processes (the dashboard) and is not thread-safe. Each strategy keeps one style (colour,
line style, marker, bar hatch) across every figure so a reader can follow it from chart
to chart, and no two of up to 36 federated strategies share a style.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedcare.report.results import Stat, Strategy, StudyResults


@dataclass(frozen=True)
class SeriesStyle:
    """How one strategy is drawn everywhere: lines, markers, bars and table swatches."""

    colour: str
    linestyle: str  # matplotlib: "-", "--", "-.", ":"
    marker: str
    hatch: str = ""  # bars: the line style's counterpart


# Federated strategies take Paul Tol's "muted" palette (nine colours that stay apart under
# the common forms of colour blindness and in print); past nine, the colours repeat with
# the next line style and bar hatch, and each colour keeps its own marker.
_FEDERATED_COLOURS = (
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
_CYCLES = (("-", ""), ("--", "//"), ("-.", ".."), (":", "xx"))
# Baselines in neutral greys and their own line styles.
_BASELINE_STYLES = {
    "local": SeriesStyle("#9a9a9a", "--", "s", "//"),
    "pooled": SeriesStyle("#3d3d3d", "--", "s"),
    "majority": SeriesStyle("#6f6f6f", ":", "s", "xx"),
}
_KIND_ORDER = {"local": 0, "pooled": 1, "majority": 2, "federated": 3}
_DPI = 150


def ordered(strategies: Sequence[Strategy]) -> list[Strategy]:
    """Baselines first (local, pooled), then federated strategies in file order."""
    return sorted(strategies, key=lambda s: _KIND_ORDER[s.kind])


def federated_style(index: int) -> SeriesStyle:
    """The style of the index-th federated strategy (0-based, in file order)."""
    n = len(_FEDERATED_COLOURS)
    linestyle, hatch = _CYCLES[(index // n) % len(_CYCLES)]
    return SeriesStyle(_FEDERATED_COLOURS[index % n], linestyle, _MARKERS[index % n], hatch)


def strategy_styles(results: StudyResults) -> dict[str, SeriesStyle]:
    """Map strategy name to its style; the same study always gets the same styles."""
    styles: dict[str, SeriesStyle] = {}
    federated = 0
    for strategy in results.strategies:
        if strategy.kind in _BASELINE_STYLES:
            styles[strategy.name] = _BASELINE_STYLES[strategy.kind]
        else:
            styles[strategy.name] = federated_style(federated)
            federated += 1
    return styles


def strategy_colours(results: StudyResults) -> dict[str, str]:
    """Map strategy name to its hex colour (see :func:`strategy_styles`)."""
    return {name: style.colour for name, style in strategy_styles(results).items()}


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
    ax: Axes, results: StudyResults, series: str, styles: dict[str, SeriesStyle], title: str
) -> None:
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    drawn = False
    for strategy in ordered(results.strategies):
        look, label = styles[strategy.name], _text(strategy.label)
        curve = strategy.curves.series.get(series) if strategy.curves else None
        if strategy.curves is None or curve is None or not strategy.curves.round:
            # No rounds (the majority class): a level line at its final value, which the
            # overall block keeps under the same name as the curve.
            level = strategy.overall.get(series)
            if strategy.kind == "majority" and level is not None and math.isfinite(level.mean):
                ax.axhline(
                    level.mean, color=look.colour, linestyle=look.linestyle, lw=1.4, label=label
                )
                drawn = True
            continue
        rounds = np.asarray(strategy.curves.round, dtype=float)
        mean = np.asarray(curve.mean, dtype=float)
        ax.plot(
            rounds,
            mean,
            color=look.colour,
            linestyle=look.linestyle,
            linewidth=1.6,
            marker=look.marker,
            markersize=4,
            markevery=max(1, len(rounds) // 6),
            label=label,
        )
        if curve.std:
            std = np.asarray(curve.std, dtype=float)
            ax.fill_between(rounds, mean - std, mean + std, color=look.colour, alpha=0.10, lw=0)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)


def learning_curves_png(results: StudyResults) -> bytes:
    """Mean site accuracy (C-index for survival) and pooled loss per round, mean line with a
    ±1 std band over seeds."""
    styles = strategy_styles(results)
    fig, (acc_ax, loss_ax) = _new_figure(10, 3.6, ncols=2)
    survival = results.study.task == "survival"
    metric, title = ("c_index", "C-index") if survival else ("accuracy", "accuracy")
    _curve_panel(acc_ax, results, f"mean_site_{metric}", styles, f"Mean site {title}")
    _curve_panel(loss_ax, results, "pooled_loss", styles, "Pooled test loss")
    loss_name = "Cox loss per row" if survival else "cross-entropy"
    for ax, ylabel in ((acc_ax, title), (loss_ax, loss_name)):
        _style(ax, ylabel=ylabel, xlabel="round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
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
    styles = strategy_styles(results)
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
            color=styles[strategy.name].colour,
            hatch=styles[strategy.name].hatch or None,
            edgecolor="white",
            linewidth=0.4,
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
    styles = strategy_styles(results)
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
            fmt=styles[strategy.name].marker,
            color=styles[strategy.name].colour,
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
    styles = strategy_styles(results)
    for s in reference[:4]:
        y, _ = _mean_std(s.overall["mean_site_accuracy"])
        ax.axhline(
            y,
            linestyle="--",
            linewidth=1,
            color=styles[s.name].colour,
            label=_text(s.label) + " (no DP)",
        )
    if reference:
        ax.legend(loc="lower right", frameon=False, fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)  # room for the labels under the points
    _style(ax, ylabel="mean site accuracy", xlabel="epsilon spent (log scale)")
    ax.set_title("Privacy against accuracy", loc="left", fontsize=10, fontweight="bold")
    return _png(fig)
