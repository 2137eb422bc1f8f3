"""A first schema drafted from one hospital's file, for a person to check and edit.

The draft infers each column's type and lists the categories it sees, but writes nothing
that one hospital's rows cannot vouch for as a rule for every site: the observed min/max
go into comments, not into ``min``/``max`` (which would turn another hospital's valid
values into errors), and every guess a person must confirm is marked ``CHECK``. The draft
loads and validates against the file it came from.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import pandas as pd
import yaml

from fedcare.core.errors import ConfigError
from fedcare.data.harmonise import binary_values, category_strings

MAX_CATEGORIES = 30  # more distinct texts than this look like identifiers or free text
MAX_CLASSES = 20
MAX_CODES = 10  # a numeric column with this few whole values may be a coded category
_TARGET_NAMES = ("outcome", "target", "label", "class", "diagnosis", "y")
_TRUE_FIRST = ("1", "true", "yes", "y", "t")


@dataclass(frozen=True)
class _Line:
    text: str  # YAML, or a commented-out line
    note: str = ""

    def render(self, indent: str) -> str:
        return indent + self.text + (f"  # {self.note}" if self.note else "")


def _flow(value: object) -> str:
    """``value`` as YAML flow text, quoted where YAML would misread it (yes, 1.0, a: b)."""
    return str(yaml.safe_dump([value], default_flow_style=True, width=math.inf)).strip()[1:-1]


def _flow_list(values: list[str]) -> str:
    return "[" + ", ".join(_flow(v) for v in values) + "]"


def _sorted_values(values: set[str]) -> list[str]:
    """Numbers in numeric order, then text in alphabetical order."""

    def key(v: str) -> tuple[int, float, str]:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return sorted(values, key=key)


def choose_target(frame: pd.DataFrame, target: str | None) -> tuple[str, str]:
    """(target column, how it was chosen)."""
    columns = [str(c) for c in frame.columns]
    if target is not None:
        if target not in columns:
            close = difflib.get_close_matches(target, columns, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"--target '{target}' is not a column of the file{hint}")
        return target, "given with --target"
    for name in _TARGET_NAMES:
        for column in columns:
            if column.casefold() == name:
                return column, f"CHECK: guessed from its name '{column}'; pass --target COLUMN"
    return columns[-1], "CHECK: guessed as the last column; pass --target COLUMN"


def _target_lines(series: pd.Series, column: str, how: str) -> list[str]:
    values = set(category_strings(series))
    missing = int(series.isna().sum())
    lines = [f"  column: {_flow(column)}  # {how}"]
    if missing:
        lines[0] += f"; {missing} row(s) have no label: fill them or drop those rows"
    if len(values) < 2:
        raise ConfigError(
            f"target '{column}' has {len(values)} distinct value(s) in this file "
            f"({sorted(values)}); draft from a file with both classes, or pass --target"
        )
    ordered = _sorted_values(values)
    if len(values) == 2:
        truthy = [v for v in ordered if v.casefold() in _TRUE_FIRST]
        positive = truthy[0] if len(truthy) == 1 else ordered[1]
        negative = next(v for v in ordered if v != positive)
        lines.append(f"  positive: {_flow_list([positive])}  # CHECK: the positive class")
        lines.append(
            f"  negative: {_flow_list([negative])}  # any value in neither list is an error"
        )
        return lines
    if len(values) > MAX_CLASSES:
        raise ConfigError(
            f"target '{column}' has {len(values)} distinct values: a target needs two classes "
            f"(binary) or a short list (multiclass, at most {MAX_CLASSES}); pass --target"
        )
    lines.append(
        f"  classes: {_flow_list(ordered)}  # CHECK: multiclass, in this order (class 0, 1, ...)"
    )
    return lines


def _observed(series: pd.Series, numbers: pd.Series) -> str:
    present = numbers.dropna()
    low, high = present.min(), present.max()
    text = f"{low:g} to {high:g} in this file"
    missing = int(series.isna().sum())
    return text + (f"; {missing} missing" if missing else "")


def _feature_line(name: str, series: pd.Series) -> tuple[_Line, bool]:
    """(the feature's line, whether it has missing values)."""
    present = series.dropna()
    gaps = bool(series.isna().any())
    missing = f"{int(series.isna().sum())} missing" if gaps else ""
    if present.empty:
        return _Line(f"# - {{name: {_flow(name)}, type: numeric}}", "empty in this file"), False
    numbers = pd.to_numeric(series, errors="coerce")
    texts = set(category_strings(series))
    if numbers.notna().sum() == len(present):
        if texts <= {"0", "1"}:
            return _Line(f"- {{name: {_flow(name)}, type: binary}}", missing), gaps
        note = f"{_observed(series, numbers)}; CHECK: add min/max valid at every site"
        whole = bool((numbers.dropna() % 1 == 0).all())
        if whole and len(texts) <= MAX_CODES:
            note += f"; {len(texts)} whole numbers: if they are codes, make it categorical"
        return _Line(f"- {{name: {_flow(name)}, type: numeric}}", note), gaps
    if binary_values(series).notna().sum() == len(present) and len(texts) <= 2:
        return _Line(f"- {{name: {_flow(name)}, type: binary}}", missing), gaps
    if len(texts) > MAX_CATEGORIES:
        return _Line(
            f"# - {{name: {_flow(name)}, type: categorical, categories: [...]}}",
            f"{len(texts)} distinct values (an identifier or free text?): left out",
        ), False
    categories = _flow_list(_sorted_values(texts))
    note = "CHECK: add the categories other sites use" + (f"; {missing}" if missing else "")
    return _Line(
        f"- {{name: {_flow(name)}, type: categorical, categories: {categories}}}", note
    ), gaps


@dataclass(frozen=True)
class SurvivalRoles:
    """The columns named with ``--time``, ``--event`` and (optionally) ``--entry``."""

    time: str
    event: str
    entry: str | None = None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.time, self.event, self.entry) if c is not None]


def _check_roles(frame: pd.DataFrame, roles: SurvivalRoles, target: str | None) -> None:
    if target is not None:
        raise ConfigError(
            "give either --target (a label to classify) or --time and --event (survival), not both"
        )
    columns = [str(c) for c in frame.columns]
    for option, column in zip(("--time", "--event", "--entry"), roles.columns, strict=False):
        if column not in columns:
            close = difflib.get_close_matches(column, columns, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{option} '{column}' is not a column of the file{hint}")
    if len(set(roles.columns)) != len(roles.columns):
        raise ConfigError(f"--time, --event and --entry name the same column: {roles.columns}")


def _survival_lines(frame: pd.DataFrame, roles: SurvivalRoles) -> list[str]:
    """The survival block: roles as given, event values guessed (marked CHECK)."""
    times = pd.to_numeric(frame[roles.time], errors="coerce")
    if times.notna().sum() == 0:
        raise ConfigError(f"--time '{roles.time}' holds no number in this file")
    values = _sorted_values(set(category_strings(frame[roles.event])))
    if len(values) > 2:
        raise ConfigError(
            f"--event '{roles.event}' has {len(values)} distinct values ({values[:6]}): an "
            "event indicator has two, event and censored"
        )
    truthy = [v for v in values if v.casefold() in _TRUE_FIRST]
    event = truthy[0] if len(truthy) == 1 else values[-1] if len(values) == 2 else "1"
    censored = next((v for v in values if v != event), "0" if event != "0" else "1")
    lines = [
        "survival:",
        f"  time: {_flow(roles.time)}  # {_observed(frame[roles.time], times)}; one unit at "
        "every site",
        f"  event: {_flow(roles.event)}",
        f"  event_values: {_flow_list([event])}  # CHECK: the value meaning the event happened",
        f"  censored_values: {_flow_list([censored])}  # any value in neither list is an error",
    ]
    if len(values) < 2:
        lines[3] += f"; only {values} in this file"
    if roles.entry is not None:
        lines.append(f"  entry: {_flow(roles.entry)}  # left truncation: at most the time")
    return lines


def draft_schema(
    frame: pd.DataFrame,
    source: str,
    target: str | None = None,
    survival: SurvivalRoles | None = None,
) -> str:
    """A commented YAML schema for ``frame`` (read from ``source``): a classification
    ``target`` (given or guessed), or the ``survival`` roles when they are given."""
    head = [
        f"# Schema drafted by `fedcare datasets schema` from {source} ({len(frame)} rows).",
        "# Check every line marked CHECK; `fedcare datasets describe tabular` explains each",
        "# key. Observed ranges are comments: min/max would be rules for every site.",
    ]
    if survival is not None:
        _check_roles(frame, survival, target)
        outcome, skipped = _survival_lines(frame, survival), set(survival.columns)
        besides = f"the survival columns {survival.columns}"
    else:
        column, how = choose_target(frame, target)
        outcome, skipped = ["target:", *_target_lines(frame[column], column, how)], {column}
        besides = f"the target '{column}'"
    lines = [*head, *outcome, "features:"]
    split: str | None = None
    used = with_gaps = 0
    for name in (str(c) for c in frame.columns):
        if name in skipped:
            continue
        values = set(category_strings(frame[name]))
        if values and values <= {"train", "test"} and split is None:
            split = name
            continue
        line, gaps = _feature_line(name, frame[name])
        lines.append(line.render("  "))
        used += not line.text.startswith("#")
        with_gaps += gaps
    if not used:
        raise ConfigError(
            f"{source}: no column besides {besides} can be a feature "
            "(each is empty, an identifier or free text)"
        )
    if split is not None:
        lines.append(f"split_column: {_flow(split)}  # holds train/test in every row")
    else:
        lines.append("test_fraction: 0.3  # share of each site's rows held out for testing")
    lines.append(
        "missing_indicator: false  # true adds a 0/1 <name>_missing column per numeric/binary "
        f"feature ({with_gaps} here have missing values, imputed with the training mean)"
    )
    return "\n".join(lines) + "\n"
