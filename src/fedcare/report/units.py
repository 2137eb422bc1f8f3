"""One way to write amounts of data everywhere: binary units (B, KiB, MiB, GiB, TiB).

The terminal table, the report's results table and its communication section all call
:func:`format_bytes`, so a number read in one place can be compared with another.
"""

from __future__ import annotations

import math

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float | int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB; ``"—"`` when unknown."""
    if count is None or not math.isfinite(count):
        return "—"
    value, unit = float(count), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.0f} B" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"
