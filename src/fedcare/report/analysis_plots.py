"""Figures of the analysis report as PNG bytes: Kaplan-Meier curves with their confidence
bands, and a forest plot of hazard ratios. Bare ``Figure`` objects on the Agg canvas, as in
:mod:`fedcare.report.plots` (pyplot is never imported)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from fedcare.report.plots import _new_figure, _png, _style, _text

# Paul Tol's "bright" palette: apart under the common colour blindnesses and in print.
_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_COLOURS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def km_png(curves: Mapping[str, Mapping[str, Sequence[Any]]], time_unit: str = "") -> bytes:
    """Each curve as a step function from S(0) = 1, its pointwise CI as a shaded band."""
    fig, [ax] = _new_figure(6.4, 3.8)
    for index, (name, curve) in enumerate(curves.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        times = np.concatenate([[0.0], _floats(curve["times"])])
        survival = np.concatenate([[1.0], _floats(curve["survival"])])
        lower = np.concatenate([[1.0], _floats(curve["lower"])])
        upper = np.concatenate([[1.0], _floats(curve["upper"])])
        ax.step(times, survival, where="post", color=colour, label=_text(name), linewidth=1.6)
        ax.fill_between(times, lower, upper, step="post", color=colour, alpha=0.18, linewidth=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    _style(
        ax, ylabel="Survival probability", xlabel=f"Time{f' ({time_unit})' if time_unit else ''}"
    )
    if len(curves) > 1:
        ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def forest_png(
    names: Sequence[str], ratio: Sequence[Any], lower: Sequence[Any], upper: Sequence[Any]
) -> bytes:
    """Hazard ratios with their confidence intervals on a log axis, 1 marked."""
    fig, [ax] = _new_figure(6.0, 0.9 + 0.38 * len(names))
    y = np.arange(len(names))[::-1]
    hr, lo, hi = _floats(ratio), _floats(lower), _floats(upper)
    ax.hlines(y, lo, hi, color="#4477AA", linewidth=1.8)
    ax.plot(hr, y, "s", color="#4477AA", markersize=6)
    ax.axvline(1.0, color="#888888", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    finite = np.concatenate([lo, hi, [1.0]])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    ticks = [t for t in _TICKS if finite.min() / 1.5 <= t <= finite.max() * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [_text(n) for n in names])
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_xlabel("Hazard ratio (log scale)")
    return _png(fig)
