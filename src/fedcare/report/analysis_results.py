"""Typed view of an analysis's ``metrics.json`` (``fedcare analyze``, a deployed query).

The report reads an analysis folder through :func:`load_analysis_results` only, so a
malformed file fails once, naming the file and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.report.results import MetricsFileError

ANALYSIS_TYPE = "analysis"


@dataclass(frozen=True)
class AnalysisSite:
    name: str
    rows: int
    min_cell: int
    release_extremes: bool


@dataclass(frozen=True)
class AnalysisEntry:
    """One analysis's result: ``tables`` as the analysis wrote them, ``notes`` in words."""

    id: str
    kind: str
    title: str
    tables: Mapping[str, Any]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    analysis: str
    step: str
    question: int
    site: str
    values: Mapping[str, tuple[int, ...]]
    suppressed: tuple[str, ...]
    noise: tuple[str, ...]


@dataclass(frozen=True)
class AnalysisResults:
    name: str
    dataset: str
    split: str
    plan_hash: str
    created: str
    fedcare_version: str
    mode: str
    sites: tuple[AnalysisSite, ...]
    min_cell: int
    release_extremes: bool
    noise: Mapping[str, Any] | None
    secure: str
    analyses: tuple[AnalysisEntry, ...]
    suppressed: tuple[str, ...]
    releases: tuple[Release, ...]
    data_warnings: tuple[str, ...] = ()
    privacy_spent: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def is_analysis_metrics(path: Path) -> bool:
    """Whether ``path`` is an analysis's metrics.json (not a training study's)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("type") == ANALYSIS_TYPE


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file

    def get(self, raw: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(raw, dict) or key not in raw:
            raise MetricsFileError(self.file, f"{where}{key}", "missing")
        value = raw[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise MetricsFileError(
                self.file, f"{where}{key}", f"expected {_names(kind)}, found {type(value).__name__}"
            )
        return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def load_analysis_results(path: Path) -> AnalysisResults:
    """Read and check an analysis's metrics.json."""
    file = str(path)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MetricsFileError(file, "", f"cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MetricsFileError(file, "", f"not valid JSON: {exc}") from None
    r = _Reader(file)
    if r.get(raw, "type", str, "") != ANALYSIS_TYPE:
        raise MetricsFileError(file, "type", f"expected '{ANALYSIS_TYPE}', found {raw['type']!r}")
    if r.get(raw, "schema_version", int, "") != 1:
        raise MetricsFileError(file, "schema_version", f"unsupported: {raw['schema_version']}")
    study = r.get(raw, "study", dict, "")
    disclosure = r.get(raw, "disclosure", dict, "")
    sites = tuple(
        AnalysisSite(
            name=r.get(s, "name", str, f"sites[{i}]."),
            rows=r.get(s, "rows", int, f"sites[{i}]."),
            min_cell=r.get(s, "min_cell", int, f"sites[{i}]."),
            release_extremes=r.get(s, "release_extremes", bool, f"sites[{i}]."),
        )
        for i, s in enumerate(r.get(raw, "sites", list, ""))
    )
    analyses = tuple(
        AnalysisEntry(
            id=r.get(a, "id", str, f"analyses[{i}]."),
            kind=r.get(a, "kind", str, f"analyses[{i}]."),
            title=r.get(a, "title", str, f"analyses[{i}]."),
            tables=r.get(a, "tables", dict, f"analyses[{i}]."),
            notes=tuple(str(n) for n in r.get(a, "notes", list, f"analyses[{i}].")),
        )
        for i, a in enumerate(r.get(raw, "analyses", list, ""))
    )
    releases = tuple(
        Release(
            analysis=r.get(x, "analysis", str, f"releases[{i}]."),
            step=r.get(x, "step", str, f"releases[{i}]."),
            question=r.get(x, "question", int, f"releases[{i}]."),
            site=r.get(x, "site", str, f"releases[{i}]."),
            values={
                str(k): tuple(int(d) for d in v)
                for k, v in r.get(x, "values", dict, f"releases[{i}].").items()
            },
            suppressed=tuple(str(s) for s in r.get(x, "suppressed", list, f"releases[{i}].")),
            noise=tuple(str(s) for s in r.get(x, "noise", list, f"releases[{i}].")),
        )
        for i, x in enumerate(r.get(raw, "releases", list, ""))
    )
    noise = disclosure.get("noise")
    return AnalysisResults(
        name=r.get(study, "name", str, "study."),
        dataset=r.get(study, "dataset", str, "study."),
        split=r.get(study, "split", str, "study."),
        plan_hash=r.get(study, "plan_hash", str, "study."),
        created=r.get(study, "created", str, "study."),
        fedcare_version=r.get(study, "fedcare_version", str, "study."),
        mode=r.get(study, "mode", str, "study."),
        sites=sites,
        min_cell=r.get(disclosure, "min_cell", int, "disclosure."),
        release_extremes=r.get(disclosure, "release_extremes", bool, "disclosure."),
        noise=noise if isinstance(noise, dict) else None,
        secure=r.get(disclosure, "secure", str, "disclosure."),
        analyses=analyses,
        suppressed=tuple(str(s) for s in r.get(raw, "suppressed", list, "")),
        releases=releases,
        data_warnings=tuple(str(w) for w in study.get("data_warnings", [])),
        privacy_spent={
            str(site): (float(v["epsilon"]), float(v["delta"]))
            for site, v in raw.get("privacy_spent", {}).items()
        },
    )
