"""Small-cell disclosure control, applied at the site before anything leaves it.

Primary suppression: a count in ``1 .. min_cell - 1`` (a histogram bin, a crosstab cell, a
group's n) is withheld, and so is every statistic computed from that many rows. Zero counts
are released: "nobody" is the usual published value and withholding it would mark the
non-empty small cells. Complementary suppression: where released counts add up to a
released total (a crosstab's row, column and grand totals; a group column of a table one
against its overall column), a single withheld part could be recovered by subtraction, so
a second part (the smallest released non-zero one, else the total) is withheld as well,
until no such equation has exactly one unknown.

Scope: the equations are those inside one release, plus totals any release gives away
(a group's row count, which links a variable's n and missing count). Linked tables across
questions (the same n in a histogram and in a describe) are protected by the same rule
applied to the same numbers, which picks the same complements in the common cases, but no
joint audit across questions is made; exact recovery is prevented, intervals are not.

A withheld entry is released as 0 with a flag in a parallel ``<key>:suppressed`` array
(1 where withheld), so a ``sum`` question keeps its fixed shape, a secure sum can carry it,
and the combined flags say how many sites withheld each entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedcare.stats.protocol import DisclosureRules

SUPPRESSED_SUFFIX = ":suppressed"

Equation = tuple[int, Sequence[int]]
"""``(whole, parts)``: flat indices where ``values[whole] == sum(values[parts])``."""


def site_rules(plan: DisclosureRules, own: DisclosureRules | None) -> DisclosureRules:
    """The rules a site applies: the plan's, made stricter by its own (never laxer)."""
    return plan if own is None else own.stricter(plan)


def small(counts: npt.ArrayLike, min_cell: int) -> npt.NDArray[np.bool_]:
    """Where a count is a small cell: in ``1 .. min_cell - 1``."""
    c = np.asarray(counts, dtype=np.float64)
    return (c > 0) & (c < min_cell)


def complete_suppression(
    values: npt.ArrayLike,
    withheld: npt.ArrayLike,
    equations: Sequence[Equation],
    fixed: Sequence[int] = (),
) -> npt.NDArray[np.bool_]:
    """Add complementary suppressions so no equation has exactly one withheld entry.

    ``values``: the flat counts; ``withheld``: the primary suppressions; ``fixed``: entries
    known anyway (released by another question), never withheld. For an equation with
    exactly one unknown, the smallest released non-zero part is withheld too (a zero part
    protects little: the two then add up to the first cell), else the whole, else a zero
    part. Repeats until stable, since a new suppression can open another equation.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    mask = np.asarray(withheld, dtype=bool).ravel().copy()
    known = set(fixed)
    changed = True
    while changed:
        changed = False
        for whole, parts in equations:
            if int(mask[[whole, *parts]].sum()) != 1:
                continue
            free = [p for p in parts if not mask[p] and p not in known]
            nonzero = [p for p in free if v[p] > 0]
            if nonzero:
                pick = min(nonzero, key=lambda p: (v[p], p))
            elif not mask[whole] and whole not in known:
                pick = whole
            elif free:
                pick = free[0]
            else:
                continue  # nothing left to withhold: the cell is as protected as it can be
            mask[pick] = True
            changed = True
    return mask


def describe_suppressed(
    labels: Sequence[str], primary: npt.ArrayLike, final: npt.ArrayLike, what: str, min_cell: int
) -> tuple[str, ...]:
    """The Release.suppressed lines for one array: which entries were withheld and why."""
    p = np.asarray(primary, dtype=bool).ravel()
    f = np.asarray(final, dtype=bool).ravel()
    lines: list[str] = []
    small_ones = [labels[int(i)] for i in np.flatnonzero(p)]
    if small_ones:
        lines.append(
            f"{what}: withheld {', '.join(small_ones)} (fewer than min_cell={min_cell} rows)"
        )
    extra = [labels[int(i)] for i in np.flatnonzero(f & ~p)]
    if extra:
        lines.append(
            f"{what}: also withheld {', '.join(extra)} (complementary: a withheld cell could "
            f"otherwise be recovered from a released total)"
        )
    return tuple(lines)
