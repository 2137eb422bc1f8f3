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
        notes: list[str] = [line for part in done.values() for line in part["notes"]]
        tables = {name: part["tables"] for name, part in done.items()}
        sites = sorted(next((t["by_site"] for t in tables.values() if "by_site" in t), {}))
        # Each column: where its numbers come from (the pooled groups, or one site's overall).
        columns: dict[str, Any] = {c: (c, None) for c in self.columns}
        columns.update({f"site {site}": (OVERALL, site) for site in sites})
        rows: list[dict[str, Any]] = []
        for v in self.numeric:
            stats = {c: self._described(tables["describe"], v, *src) for c, src in columns.items()}
            rows.append(
                {
                    "variable": v,
                    "statistic": "mean (SD)",
                    "cells": {
                        c: f"{self._num(x['mean'])} ({self._num(x['sd'])})"
                        for c, x in stats.items()
                    },
                    "n": {c: x["n"] for c, x in stats.items()},
                }
            )
            if f"histogram:{v}" in tables:
                hist = tables[f"histogram:{v}"]
                groups = {
                    c: (hist["groups"] if site is None else hist["by_site"][site])[label]
                    for c, (label, site) in columns.items()
                }
                rows.append(
                    {
                        "variable": v,
                        "statistic": "median [Q1, Q3]",
                        "cells": {c: self._quartiles(g) for c, g in groups.items()},
                        "error_bound": {
                            c: max((g[q]["error_bound"] or 0.0) for q in ("q1", "median", "q3"))
                            for c, g in groups.items()
                        },
                    }
                )
            rows.append(
                {
                    "variable": v,
                    "statistic": "missing, n",
                    "cells": {c: str(x["missing"]) for c, x in stats.items()},
                }
            )
        for v, v_levels in self.categorical.items():
            rows += self._categorical(v, v_levels, tables[f"crosstab:{v}"], columns)
        result = {"columns": list(columns), "by": self.by, "rows": rows, "parts": tables}
        return AnalysisResult(self.id, "table_one", result, tuple(notes))

    @staticmethod
    def _described(
        tables: Mapping[str, Any], v: str, label: str, site: str | None
    ) -> Mapping[str, Any]:
        stats = tables["variables"] if site is None else tables["by_site"][site]
        return stats[v][label]  # type: ignore[no-any-return]

    def _quartiles(self, group: Mapping[str, Any]) -> str:
        q1, median, q3 = (group[q]["estimate"] for q in ("q1", "median", "q3"))
        if median is None:
            return WITHHELD
        return f"{self._num(median)} [{self._num(q1)}, {self._num(q3)}]"

    def _categorical(
        self,
        v: str,
        v_levels: Sequence[str],
        tables: Mapping[str, Any],
        columns: Mapping[str, tuple[str, str | None]],
    ) -> list[dict[str, Any]]:
        col_labels: list[str] = tables["cols"]
        total = len(col_labels) - 1  # the overall column is the crosstab's total column
        # Each table-one column: the crosstab (pooled or one site's) and its column in it.
        where = {
            c: (
                tables["counts"] if site is None else tables["by_site"][site],
                total if label == OVERALL else col_labels.index(label),
            )
            for c, (label, site) in columns.items()
        }
        missing_row = len(v_levels)
        out: list[dict[str, Any]] = []
        for i, level in enumerate(v_levels):
            cells = {}
            for c, (counts, j) in where.items():
                count, n, missing = counts[i][j], counts[-1][j], counts[missing_row][j]
                if count is None or n is None or missing is None:
                    cells[c] = WITHHELD
                    continue
                present = n - missing
                share = 100.0 * count / present if present else 0.0
                cells[c] = f"{count} ({share:.1f}%)"
            out.append({"variable": v, "statistic": f"{level}, n (%)", "cells": cells})
        out.append(
            {
                "variable": v,
                "statistic": "missing, n",
                "cells": {
                    c: WITHHELD if counts[missing_row][j] is None else str(counts[missing_row][j])
                    for c, (counts, j) in where.items()
                },
            }
        )
        return out
