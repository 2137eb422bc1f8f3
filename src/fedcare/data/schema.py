"""The declared schema of a hospital's own table, and the issues validation can find.

A study declares its columns once; each site's file is checked against it before any
training, and every problem is reported with the site, file and column it concerns.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.yaml_config import read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def category_text(value: object) -> str:
    """One spelling per category, so 1, 1.0 and '1' from YAML, CSV or Parquet all agree."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class FeatureSpec(_Strict):
    name: str
    type: Literal["numeric", "categorical", "binary"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    required: bool = True

    @field_validator("categories", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # YAML reads `categories: [1, 2, 3]` as ints; categories are compared as text.
        return _values_as_text(value)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type != "numeric" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature '{self.name}': min/max only apply to numeric features")
        if self.type != "categorical" and self.categories is not None:
            raise ValueError(
                f"feature '{self.name}': categories only apply to categorical features"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature '{self.name}': min {self.min} is above max {self.max}")
        return self


class TargetSpec(_Strict):
    """Binary: the label values of each class (``positive`` and ``negative``, both declared,
    so a value in neither is an error rather than a silent negative); multiclass: an ordered
    ``classes`` list. Values are kept as category text ("1", "yes")."""

    column: str
    positive: list[str] | None = None
    negative: list[str] | None = None
    classes: list[str] | None = None

    @field_validator("positive", "negative", "classes", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return _values_as_text(value)

    @model_validator(mode="after")
    def _one_kind(self) -> TargetSpec:
        binary = self.positive is not None or self.negative is not None
        if binary and self.classes is not None:
            raise ValueError(
                "give either 'positive' and 'negative' (binary) or 'classes' (multiclass), not both"
            )
        if not binary and self.classes is None:
            raise ValueError(
                f"declare the values of '{self.column}': 'positive' and 'negative' for a "
                "binary target (e.g. positive: [1] and negative: [0]) or 'classes' for a "
                "multiclass one (e.g. classes: [low, medium, high])"
            )
        if binary:
            self._both_classes()
        elif self.classes is not None:
            if len(self.classes) < 2:
                raise ValueError("'classes' needs at least two classes")
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if twice:
                raise ValueError(f"'classes' lists {twice} more than once")
        return self

    def _both_classes(self) -> None:
        for given, absent in (("positive", "negative"), ("negative", "positive")):
            if getattr(self, absent) is None:
                values = getattr(self, given)
                raise ValueError(
                    f"a binary target declares both classes: {given} is {values}; add "
                    f"'{absent}: [...]' listing the value(s) of '{self.column}' that mean "
                    f"{absent} (e.g. positive: [1] and negative: [0]), so that any other value "
                    "is reported instead of being read as a class"
                )
        for name in ("positive", "negative"):
            if not getattr(self, name):
                raise ValueError(f"'{name}' lists no value")
        both = sorted(set(self.positive or []) & set(self.negative or []))
        if both:
            raise ValueError(f"{both} listed as both positive and negative")

    @property
    def num_classes(self) -> int:
        return 2 if self.classes is None else len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) if self.classes is not None else ["negative", "positive"]

    @property
    def class_index(self) -> dict[str, int]:
        """Each declared label value (category text) and its class index."""
        if self.classes is not None:
            return {c: i for i, c in enumerate(self.classes)}
        return dict.fromkeys(self.negative or [], 0) | dict.fromkeys(self.positive or [], 1)

    def declared(self) -> str:
        """The declared values, as an error message shows them."""
        if self.classes is not None:
            return f"one of the classes {self.classes}"
        return f"positive {self.positive} or negative {self.negative}"


class SurvivalSpec(_Strict):
    """The survival roles of a table: follow-up ``time``, ``event`` indicator, optional
    ``entry`` time (left truncation: a patient joins the risk set at entry, not at 0).

    ``event_values``/``censored_values`` are the values of the event column that mean the
    event was observed / the row is censored (category text, default 1 and 0); any other
    value is an error naming its row, never a silent censoring. Times are numbers >= 0 in
    one unit for every site; a row's entry, when declared, is at most its time.
    """

    time: str
    event: str
    entry: str | None = None
    event_values: list[str] = Field(default_factory=lambda: ["1"])
    censored_values: list[str] = Field(default_factory=lambda: ["0"])

    @field_validator("event_values", "censored_values", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return _values_as_text(value)

    @model_validator(mode="after")
    def _consistent(self) -> SurvivalSpec:
        roles = [c for c in (self.time, self.event, self.entry) if c is not None]
        if len(set(roles)) != len(roles):
            raise ValueError(f"time, event and entry must be three different columns: {roles}")
        for name in ("event_values", "censored_values"):
            if not getattr(self, name):
                raise ValueError(f"'{name}' lists no value")
        both = sorted(set(self.event_values) & set(self.censored_values))
        if both:
            raise ValueError(f"{both} listed in both event_values and censored_values")
        return self

    @property
    def columns(self) -> list[str]:
        """The role columns every site's file must have."""
        return [c for c in (self.time, self.event, self.entry) if c is not None]

    @property
    def event_index(self) -> dict[str, int]:
        """Each declared event-column value (category text) and its indicator, 1 or 0."""
        return dict.fromkeys(self.censored_values, 0) | dict.fromkeys(self.event_values, 1)

    def declared(self) -> str:
        return f"event {self.event_values} or censored {self.censored_values}"


def _values_as_text(value: Any) -> Any:
    """Category values as text; YAML's unquoted yes/no/true/false are refused, since the
    spelling the file uses can no longer be told (yes? True? on?)."""
    if isinstance(value, str | int | float):  # one value without brackets: a list of one
        value = [value]
    if not isinstance(value, list):
        return value
    for item in value:
        if isinstance(item, bool):
            raise ValueError(
                "YAML reads an unquoted yes/no/true/false/on/off as a boolean; quote "
                "the value as the file spells it, e.g. ['yes'] or ['true']"
            )
        if not isinstance(item, str | int | float):
            raise ValueError(
                f"expected a list of values such as [1, 0] or ['yes', 'no'], found {item!r}"
            )
    return [category_text(v) for v in value]


class TabularSchema(_Strict):
    """A table's declared columns. Exactly one outcome: ``target`` (a classification label)
    or ``survival`` (time/event/entry roles); a survival table has no classification target,
    and its rows are for survival analyses and Cox models."""

    target: TargetSpec | None = None
    features: list[FeatureSpec] = Field(min_length=1)
    survival: SurvivalSpec | None = None
    split_column: str | None = None  # values 'train'/'test'; otherwise a seeded split
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)  # seeded split's share
    seed: int | None = Field(default=None, ge=0)  # seed of the seeded stratified split
    missing_indicator: bool = False  # add a 0/1 column per numeric feature with gaps

    @model_validator(mode="after")
    def _unique(self) -> TabularSchema:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features declared twice: {dupes}")
        if (self.target is None) == (self.survival is None):
            raise ValueError(
                "declare exactly one outcome: 'target' (a label to classify) or 'survival' "
                "(time and event columns), found "
                + ("both" if self.target is not None else "neither")
            )
        for role, column in self.outcome_roles().items():
            if column in names:
                raise ValueError(f"{role} column '{column}' is also declared as a feature")
            if column == self.split_column:
                raise ValueError(f"{role} column '{column}' is also the split_column")
        if self.split_column is not None and self.test_fraction is not None:
            raise ValueError("give either 'split_column' or 'test_fraction', not both")
        return self

    @model_serializer(mode="wrap")
    def _without_absent_outcome(self, handler: SerializerFunctionWrapHandler) -> Any:
        # The undeclared outcome is left out, so a classification schema dumps (and hashes,
        # hence is approved) exactly as before survival schemas existed.
        data = handler(self)
        for key in ("target", "survival"):
            if isinstance(data, dict) and data.get(key, "") is None:
                del data[key]
        return data

    def outcome_roles(self) -> dict[str, str]:
        """The outcome's columns by role: target, or time/event(/entry)."""
        if self.target is not None:
            return {"target": self.target.column}
        if self.survival is None:
            return {}
        roles = {"time": self.survival.time, "event": self.survival.event}
        return roles | ({"entry": self.survival.entry} if self.survival.entry else {})

    @property
    def num_classes(self) -> int:
        """Classes of the target; a survival table's rows are event/censored (one output)."""
        return 2 if self.target is None else self.target.num_classes

    @property
    def class_names(self) -> list[str]:
        return ["censored", "event"] if self.target is None else self.target.class_names

    @property
    def label(self) -> TargetSpec:
        """The classification target; a survival schema has none (a clear error, not None)."""
        if self.target is None:
            raise ConfigError(
                "this schema declares 'survival' (time/event columns), not a classification "
                "'target': it is for survival analyses and survival models"
            )
        return self.target

    @classmethod
    def load(cls, path: Path | str) -> TabularSchema:
        return cls.parse(read_yaml(path, "schema file"), source=str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "schema") -> TabularSchema:
        if raw is None:
            raise ConfigError(
                f"{source}: the schema is empty; it needs 'target' and 'features' "
                "('survival' instead of 'target' for time-to-event data)"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in exc.errors())
            raise ConfigError(f"{source}: {problems}") from None


def _describe(err: Any) -> str:
    """One pydantic error in the schema's own words: keys, never internal class names."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{where}'{hint} (allowed here: {', '.join(allowed)})"
    if kind == "missing":
        return f"'{where}' is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = ", ".join(_keys_at(loc))
        found = type(err.get("input")).__name__
        return f"'{where or 'schema'}': expected a mapping with the keys {keys}, found {found}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = f"expected {message.removeprefix('Input should be ')}, found {err['input']!r}"
    return f"'{where}': {message}" if where else message


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` (list indices skipped): a suggestion comes from these only."""
    model: type[BaseModel] = TabularSchema
    for part in loc:
        if isinstance(part, int):
            continue
        nested = _NESTED.get((model, str(part)))
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


_NESTED: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
    (TabularSchema, "target"): TargetSpec,
    (TabularSchema, "survival"): SurvivalSpec,
    (TabularSchema, "features"): FeatureSpec,
}

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ValidationIssue:
    severity: Severity
    problem: str
    site: str
    file: str
    column: str | None = None
    expected: str | None = None
    found: str | None = None

    def __str__(self) -> str:
        return str(
            DataValidationError(
                self.problem,
                site=self.site,
                file=self.file,
                column=self.column,
                expected=self.expected,
                found=self.found,
            )
        )


@dataclass
class ValidationReport:
    """Every problem of every site, so a data engineer can fix them all in one go."""

    issues: list[ValidationIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        if self.errors:
            raise TabularValidationError(self)


class TabularValidationError(DataValidationError):
    """Every error of every site in one exception; ``report`` keeps them as data."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        lines = "\n  - ".join(str(i) for i in report.errors)
        super().__init__(f"{len(report.errors)} data problem(s) found:\n  - {lines}")
