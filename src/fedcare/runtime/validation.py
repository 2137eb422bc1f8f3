"""Check a site's update before it touches the aggregate.

A site's update must fit the model's layout, be float32 and finite, carry exactly the
algorithm extras the strategy expects, have a positive finite weight and, if the study sets
one, an L2 norm within the bound. Checks run chunk by chunk, so validating a 2 GB update
needs a few megabytes, not another copy of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import UpdateRejectedError
from fedcare.core.vectors import ParamLayout
from fedcare.runtime.messages import UpdateMessage

CHUNK = 1 << 20  # values per pass: 8 MB of float64 scratch


def squared_norm(values: npt.NDArray[np.float32], what: str, offset: int = 0) -> float:
    """sum(v**2) in float64, raising ValueError that names the first non-finite entry
    (its index counted from ``offset``: where ``values`` start in the whole array)."""
    total = 0.0
    for start in range(0, values.size, CHUNK):
        part = values[start : start + CHUNK].astype(np.float64)
        sq = float(np.dot(part, part))
        if not np.isfinite(sq):
            bad = start + int(np.flatnonzero(~np.isfinite(part))[0])
            where = offset + bad
            raise ValueError(f"{what} has a non-finite value ({values[bad]}) at index {where}")
        total += sq
    return total


class StreamedFigures(Protocol):
    """What was measured of an update's values as they streamed in (never all in memory)."""

    @property
    def squares(self) -> dict[str, float]: ...  # sum of squares per segment

    @property
    def non_finite(self) -> str: ...  # the first non-finite value, or ""


def validate_update(
    update: UpdateMessage,
    layout: ParamLayout | int,
    max_norm: float | None = None,
    *,
    extras: Mapping[str, int] | None = None,
    streamed: StreamedFigures | None = None,
) -> float:
    """Raise UpdateRejectedError naming the site and the problem; return the delta's L2 norm.

    ``extras`` maps each expected extra (e.g. SCAFFOLD's control delta) to its size; None
    means the strategy uploads none. ``streamed``: the values were measured as they
    arrived (:mod:`fedcare.runtime.streamed_update`); the update's arrays then only give
    the shapes.
    """
    size = layout if isinstance(layout, int) else layout.size
    where = f"update from site '{update.sender or '?'}' for round {update.round}"

    def reject(problem: str) -> UpdateRejectedError:
        return UpdateRejectedError(f"{where}: {problem}")

    arrays = {"delta": (update.delta, size)}
    expected = dict(extras or {})
    if set(update.extras) != set(expected):
        raise reject(
            f"extras {sorted(update.extras)} do not match what the strategy uploads "
            f"({sorted(expected)})"
        )
    arrays.update({name: (update.extras[name], n) for name, n in expected.items()})
    norms: dict[str, float] = {}
    for name, (values, n) in arrays.items():
        if values.dtype != np.float32:
            raise reject(f"{name} has dtype {values.dtype}, expected float32")
        if values.ndim != 1 or values.size != n:
            raise reject(f"{name} has shape {values.shape}, expected ({n},) to fit the model")
        if streamed is not None:
            if streamed.non_finite:
                raise reject(streamed.non_finite)
            norms[name] = streamed.squares[name]
            continue
        try:
            norms[name] = squared_norm(values, name)
        except ValueError as exc:
            raise reject(str(exc)) from None
    if not np.isfinite(update.weight) or update.weight <= 0:
        raise reject(f"aggregation weight must be finite and > 0, found {update.weight}")
    norm = float(np.sqrt(norms["delta"]))
    if max_norm is not None and norm > max_norm:
        raise reject(f"delta L2 norm {norm:.6g} exceeds the study's bound {max_norm:.6g}")
    return norm
