"""Table one: the first table of a clinical paper, combined from the descriptive analyses.

Rows are variables, columns are ``overall`` and each level of the declared grouping
variable. Numeric variables get ``mean (SD)`` and, when the plan declares their histogram
grid, ``median [Q1, Q3]`` interpolated from the pooled histogram with its error bound;
categorical variables get ``n (%)`` per level (percent of the column's non-missing rows)
and a missing count. It runs its parts (:class:`Describe`, :class:`Histogram`,
:class:`CrossTab`) one after another as one analysis; its memo holds the running part's
memo, so it checkpoints like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedcare.core.errors import ConfigError
from fedcare.stats.descriptive import OVERALL
from fedcare.stats.descriptive_analysis import CrossTab, Describe, Histogram
from fedcare.stats.protocol import Analysis, AnalysisResult, Combined, Question, Step

WITHHELD = "withheld"


class TableOne(Analysis):
    """A table one over ``numeric`` and ``categorical`` (name -> declared levels)."""

    def __init__(
        self,
        id: str,
        *,
        numeric: Sequence[str] = (),
        categorical: Mapping[str, Sequence[str]] | None = None,
        by: str | None = None,
        levels: Sequence[str] = (),
        edges: Mapping[str, Sequence[float]] | None = None,
        by_site: bool = False,
        digits: int = 2,
    ) -> None:
        categorical = dict(categorical or {})
        edges = dict(edges or {})
        if not numeric and not categorical:
            raise ConfigError(f"analysis '{id}': a table one needs at least one variable")
        unknown = sorted(set(edges) - set(numeric))
        if unknown:
            raise ConfigError(
                f"analysis '{id}': edges given for {unknown}, which are not numeric variables "
                f"of this table one ({list(numeric)})"
            )
        self.id = id
        self.numeric = list(numeric)
        self.categorical = {k: [str(x) for x in v] for k, v in categorical.items()}
        self.by = by
        self.levels = [str(x) for x in levels]
        self.digits = digits
        self.columns = [OVERALL, *self.levels] if by is not None else [OVERALL]
        self.parts: list[tuple[str, Analysis]] = []
        if self.numeric:
            describe = Describe(id, self.numeric, by=by, levels=self.levels, by_site=by_site)
            self.parts.append(("describe", describe))
        for v in self.numeric:
            if v in edges:
                histogram = Histogram(
                    id, v, edges=edges[v], by=by, levels=self.levels, by_site=by_site
                )
                self.parts.append((f"histogram:{v}", histogram))
        for v, v_levels in self.categorical.items():
            crosstab = CrossTab(id, v, v_levels, by, self.levels, by_site=by_site)
            self.parts.append((f"crosstab:{v}", crosstab))

    def start(self) -> Step:
        return self._wrap(0, self.parts[0][1].start(), {})

    def _wrap(self, part: int, step: Step, done: Mapping[str, Any]) -> Step:
        return Step(step.question, {"part": part, "memo": dict(step.memo), "done": dict(done)})

    def advance(self, step: Step, combined: Combined) -> Step | AnalysisResult:
        part = int(step.memo["part"])
        name, analysis = self.parts[part]
        outcome = analysis.advance(Step(step.question, step.memo["memo"]), combined)
        if isinstance(outcome, Step):
            return self._wrap(part, outcome, step.memo["done"])
        done = {**step.memo["done"], name: {"tables": outcome.tables, "notes": list(outcome.notes)}}
        if part + 1 < len(self.parts):
            return self._wrap(part + 1, self.parts[part + 1][1].start(), done)
        return self._result(done)

    def permits(self, question: Question) -> bool:
        return any(analysis.permits(question) for _, analysis in self.parts)

    # -- the table ------------------------------------------------------------------------

    def _num(self, x: float | None) -> str:
        return WITHHELD if x is None else f"{x:.{self.digits}f}"

    def _result(self, done: Mapping[str, Any]) -> AnalysisResult:
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        for part in done.values():
            notes += part["notes"]
        described = done.get("describe", {}).get("tables", {}).get("variables", {})
        for v in self.numeric:
            stats = described[v]
            rows.append(
                {
                    "variable": v,
                    "statistic": "mean (SD)",
                    "cells": {
                        c: f"{self._num(stats[c]['mean'])} ({self._num(stats[c]['sd'])})"
                        for c in self.columns
                    },
                    "n": {c: stats[c]["n"] for c in self.columns},
                }
            )
            hist = done.get(f"histogram:{v}")
            if hist is not None:
                groups = hist["tables"]["groups"]
                rows.append(
                    {
                        "variable": v,
                        "statistic": "median [Q1, Q3]",
                        "cells": {c: self._quartiles(groups[c]) for c in self.columns},
                        "error_bound": {
                            c: max(
                                (groups[c][q]["error_bound"] or 0.0) for q in ("q1", "median", "q3")
                            )
                            for c in self.columns
                        },
                    }
                )
            rows.append(
                {
                    "variable": v,
                    "statistic": "missing, n",
                    "cells": {c: str(stats[c]["missing"]) for c in self.columns},
                }
            )
        for v, v_levels in self.categorical.items():
            rows += self._categorical(v, v_levels, done[f"crosstab:{v}"]["tables"])
        tables = {
            "columns": self.columns,
            "by": self.by,
            "rows": rows,
            "parts": {name: part["tables"] for name, part in done.items()},
        }
        return AnalysisResult(self.id, "table_one", tables, tuple(notes))

    def _quartiles(self, group: Mapping[str, Any]) -> str:
        q1, median, q3 = (group[q]["estimate"] for q in ("q1", "median", "q3"))
        if median is None:
            return WITHHELD
        return f"{self._num(median)} [{self._num(q1)}, {self._num(q3)}]"

    def _categorical(
        self, v: str, v_levels: Sequence[str], tables: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        counts: list[list[int | None]] = tables["counts"]
        col_labels: list[str] = tables["cols"]
        # Table-one column -> crosstab column: overall is the crosstab's total column.
        where = {
            c: (len(col_labels) - 1 if c == OVERALL else col_labels.index(c)) for c in self.columns
        }
        missing_row = len(v_levels)
        out: list[dict[str, Any]] = []
        for i, level in enumerate(v_levels):
            cells = {}
            for c, j in where.items():
                count, total, missing = counts[i][j], counts[-1][j], counts[missing_row][j]
                if count is None or total is None or missing is None:
                    cells[c] = WITHHELD
                    continue
                present = total - missing
                share = 100.0 * count / present if present else 0.0
                cells[c] = f"{count} ({share:.1f}%)"
            out.append({"variable": v, "statistic": f"{level}, n (%)", "cells": cells})
        out.append(
            {
                "variable": v,
                "statistic": "missing, n",
                "cells": {
                    c: WITHHELD if counts[missing_row][j] is None else str(counts[missing_row][j])
                    for c, j in where.items()
                },
            }
        )
        return out
