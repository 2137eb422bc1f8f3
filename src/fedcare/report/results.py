"""Typed view of a study's ``metrics.json`` and its tidy CSV export.

The study runner writes ``metrics.json``; everything in the report layer reads it through
:func:`load_results`, so a malformed file fails here, once, with a message naming the
file and the field, instead of as a ``KeyError`` deep inside a plot.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from fedcare.core.errors import FedcareError

SUPPORTED_SCHEMA_VERSIONS = (1,)
KINDS: tuple[str, ...] = ("local", "pooled", "majority", "federated")
Kind = Literal["local", "pooled", "majority", "federated"]


class MetricsFileError(FedcareError):
    """``metrics.json`` is missing, unreadable, or a field has the wrong shape."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        where = f"field '{field}'" if field else "top level"
        super().__init__(f"{file}: {where}: {problem}")


@dataclass(frozen=True)
class Stat:
    """One metric summarised over seeds. ``mean`` is NaN when the metric was undefined."""

    mean: float
    std: float
    values: tuple[float, ...] = ()

    @property
    def n_seeds(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Curve:
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Curves:
    """Per-round series; ``round`` counts equivalent training rounds for local/pooled."""

    round: tuple[int, ...]
    series: dict[str, Curve]


@dataclass(frozen=True)
class Communication:
    upload_bytes: int
    download_bytes: int
    site_upload_per_round: dict[str, float] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.upload_bytes + self.download_bytes


@dataclass(frozen=True)
class Site:
    name: str
    num_train: int
    num_test: int


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: Kind
    label: str
    hyperparameters: dict[str, object]
    per_site: dict[str, dict[str, Stat]]
    overall: dict[str, Stat]
    curves: Curves | None = None
    communication: Communication | None = None
    wall_time_s: float | None = None
    # Sections added by later issues (privacy, contributions, fairness) ride along here.
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitInfo:
    """What split each run's rows into train and test (studies on hospitals' own tables)."""

    source: str  # run seed | dataset.params.seed | schema seed | split column (or several)
    split_seeds: tuple[tuple[int, int | None], ...]  # (run seed, its split seed)


@dataclass(frozen=True)
class StudyInfo:
    name: str
    dataset: str
    model: str
    task: str
    seeds: tuple[int, ...]
    rounds: int
    created: str
    fedcare_version: str
    wall_time_s: float | None
    config: dict[str, object]
    split: SplitInfo | None = None
    data_warnings: tuple[str, ...] = ()  # what the data checks warned about (not errors)


@dataclass(frozen=True)
class StudyResults:
    schema_version: int
    study: StudyInfo
    sites: tuple[Site, ...]
    strategies: tuple[Strategy, ...]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)


_MISSING = object()


@dataclass(frozen=True)
class _Node:
    """A JSON value plus where it came from, so every check can name the exact field."""

    value: object
    path: str
    file: str

    def fail(self, problem: str) -> MetricsFileError:
        return MetricsFileError(self.file, self.path, problem)

    def _child(self, key: str | int, value: object) -> _Node:
        if isinstance(key, int):
            return _Node(value, f"{self.path}[{key}]", self.file)
        return _Node(value, f"{self.path}.{key}" if self.path else key, self.file)

    def mapping(self) -> dict[str, object]:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected an object, found {_kind_of(self.value)}")
        return cast(dict[str, object], self.value)

    def req(self, key: str) -> _Node:
        value = self.mapping().get(key, _MISSING)
        if value is _MISSING:
            raise self._child(key, None).fail("is missing")
        return self._child(key, value)

    def opt(self, key: str) -> _Node | None:
        """An optional field; absent and null both mean "not recorded"."""
        value = self.mapping().get(key)
        return None if value is None else self._child(key, value)

    def items(self) -> list[tuple[str, _Node]]:
        return [(k, self._child(k, v)) for k, v in self.mapping().items()]

    def elements(self) -> list[_Node]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, found {_kind_of(self.value)}")
        return [self._child(i, v) for i, v in enumerate(self.value)]

    def text(self) -> str:
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, found {_kind_of(self.value)}")
        return self.value

    def integer(self) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.fail(f"expected an integer, found {_kind_of(self.value)}")
        return self.value

    def number(self) -> float:
        # null stands for an undefined metric (e.g. AUC on a one-class test set).
        if self.value is None:
            return math.nan
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise self.fail(f"expected a number, found {_kind_of(self.value)}")
        return float(self.value)

    def numbers(self) -> tuple[float, ...]:
        return tuple(e.number() for e in self.elements())


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", dict: "an object", list: "a list", str: "a string"}
    for typ, name in names.items():
        if isinstance(value, typ):
            return f"{name} {value!r}" if typ in (bool, str) else name
    return f"a number {value!r}" if isinstance(value, int | float) else type(value).__name__


def _stat(node: _Node) -> Stat:
    std = node.opt("std")
    values = node.opt("values")
    return Stat(
        mean=node.req("mean").number(),
        std=std.number() if std else math.nan,
        values=values.numbers() if values else (),
    )


def _stats(node: _Node) -> dict[str, Stat]:
    return {metric: _stat(child) for metric, child in node.items()}


def _communication(node: _Node) -> Communication:
    per_site = node.opt("site_upload_bytes_per_round")
    return Communication(
        node.req("upload_bytes").integer(),
        node.req("download_bytes").integer(),
        {site: child.number() for site, child in per_site.items()} if per_site else {},
    )


def _curves(node: _Node) -> Curves:
    rounds = tuple(e.integer() for e in node.req("round").elements())
    series: dict[str, Curve] = {}
    for name, child in node.items():
        if name == "round":
            continue
        mean = child.req("mean")
        std_node = child.opt("std")
        curve = Curve(mean.numbers(), std_node.numbers() if std_node else ())
        for label, seq, where in (("mean", curve.mean, mean), ("std", curve.std, std_node)):
            if where is not None and len(seq) != len(rounds):
                raise where.fail(f"has {len(seq)} {label} values but 'round' has {len(rounds)}")
        series[name] = curve
    return Curves(rounds, series)


_STRATEGY_KEYS = frozenset(
    {"name", "kind", "label", "hyperparameters", "per_site", "overall", "curves"}
    | {"communication", "wall_time_s"}
)


def _strategy(node: _Node, site_names: set[str]) -> Strategy:
    name = node.req("name").text()
    kind_node = node.req("kind")
    if kind_node.text() not in KINDS:
        raise kind_node.fail(f"expected one of {', '.join(KINDS)}, found {kind_node.value!r}")
    label = node.opt("label")
    hyper = node.opt("hyperparameters")
    per_site: dict[str, dict[str, Stat]] = {}
    for site, child in node.req("per_site").items():
        if site not in site_names:
            raise child.fail(f"names site '{site}', which is not listed under 'sites'")
        per_site[site] = _stats(child)
    curves = node.opt("curves")
    comm = node.opt("communication")
    wall = node.opt("wall_time_s")
    return Strategy(
        name=name,
        kind=cast(Kind, kind_node.value),
        label=label.text() if label else name,
        hyperparameters=hyper.mapping() if hyper else {},
        per_site=per_site,
        overall=_stats(node.req("overall")),
        curves=_curves(curves) if curves else None,
        communication=_communication(comm) if comm else None,
        wall_time_s=wall.number() if wall else None,
        extra={k: v for k, v in node.mapping().items() if k not in _STRATEGY_KEYS},
    )


def _split(node: _Node | None) -> SplitInfo | None:
    if node is None:
        return None
    source = node.req("source")
    named = [source] if isinstance(source.value, str) else source.elements()
    runs = []
    for run in node.req("runs").elements():
        split_seed = run.opt("split_seed")
        runs.append((run.req("seed").integer(), split_seed.integer() if split_seed else None))
    return SplitInfo(", ".join(n.text() for n in named), tuple(runs))


def _study(node: _Node) -> StudyInfo:
    def optional_text(key: str) -> str:
        child = node.opt(key)
        return child.text() if child else ""

    wall = node.opt("wall_time_s")
    config = node.opt("config")
    warnings = node.opt("data_warnings")
    return StudyInfo(
        name=node.req("name").text(),
        dataset=node.req("dataset").text(),
        model=node.req("model").text(),
        task=optional_text("task"),
        seeds=tuple(e.integer() for e in node.req("seeds").elements()),
        rounds=node.req("rounds").integer(),
        created=optional_text("created"),
        fedcare_version=optional_text("fedcare_version"),
        wall_time_s=wall.number() if wall else None,
        config=config.mapping() if config else {},
        split=_split(node.opt("split")),
        data_warnings=tuple(w.text() for w in warnings.elements()) if warnings else (),
    )


def parse_results(data: object, file: str = "metrics.json") -> StudyResults:
    """Validate an already-decoded ``metrics.json`` document; ``file`` names it in errors."""
    root = _Node(data, "", file)
    version = root.req("schema_version")
    if version.integer() not in SUPPORTED_SCHEMA_VERSIONS:
        raise version.fail(
            f"this fedcare reads schema version {SUPPORTED_SCHEMA_VERSIONS}, found "
            f"{version.value}; upgrade fedcare to read this study"
        )
    sites = tuple(
        Site(e.req("name").text(), e.req("num_train").integer(), e.req("num_test").integer())
        for e in root.req("sites").elements()
    )
    strategy_nodes = root.req("strategies").elements()
    if not strategy_nodes:
        raise root.req("strategies").fail("lists no strategies; there is nothing to report")
    site_names = {s.name for s in sites}
    strategies = tuple(_strategy(e, site_names) for e in strategy_nodes)
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise root.req("strategies").fail(f"strategy names must be unique, found {names}")
    known = {"schema_version", "study", "sites", "strategies"}
    return StudyResults(
        schema_version=version.integer(),
        study=_study(root.req("study")),
        sites=sites,
        strategies=strategies,
        extra={k: v for k, v in root.mapping().items() if k not in known},
    )


def load_results(path: Path) -> StudyResults:
    """Read and validate ``metrics.json`` at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MetricsFileError(str(path), "", f"cannot be read ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise MetricsFileError(str(path), "", problem) from exc
    return parse_results(data, str(path))


CSV_COLUMNS = ("strategy", "kind", "site", "metric", "mean", "std", "n_seeds")
ALL_SITES = "ALL"


def _csv_number(value: float) -> str:
    # Blank, not "nan", so pandas and R both read an undefined metric as missing.
    return "" if math.isnan(value) else repr(value)


def _rows(strategy: Strategy, site: str, stats: Mapping[str, Stat]) -> list[list[object]]:
    head = [strategy.name, strategy.kind, site]
    return [
        [*head, metric, _csv_number(s.mean), _csv_number(s.std), s.n_seeds]
        for metric, s in stats.items()
    ]


def write_metrics_csv(results: StudyResults, path: Path) -> Path:
    """Write one row per strategy x site x metric, plus overall metrics with site ``ALL``."""
    rows: list[list[object]] = []
    for strategy in results.strategies:
        for site in results.site_names:
            rows += _rows(strategy, site, strategy.per_site.get(site, {}))
        rows += _rows(strategy, ALL_SITES, strategy.overall)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return path
