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
    ValidationError,
    field_validator,
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
        if isinstance(value, list):
            return [category_text(v) if isinstance(v, int | float) else v for v in value]
        return value

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
    """Binary with ``positive`` values, or multiclass with an ordered ``classes`` list."""

    column: str
    positive: list[str | int | float] | None = None
    classes: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TargetSpec:
        if (self.positive is None) == (self.classes is None):
            raise ValueError("target: give either 'positive' (binary) or 'classes' (multiclass)")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError("target.classes needs at least two classes")
        return self

    @property
    def num_classes(self) -> int:
        return 2 if self.classes is None else len(self.classes)


class TabularSchema(_Strict):
    target: TargetSpec
    features: list[FeatureSpec] = Field(min_length=1)
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
        if self.target.column in names:
            raise ValueError(f"target column '{self.target.column}' is also declared as a feature")
        if self.split_column is not None and self.test_fraction is not None:
            raise ValueError("give either 'split_column' or 'test_fraction', not both")
        return self

    @classmethod
    def load(cls, path: Path | str) -> TabularSchema:
        return cls.parse(read_yaml(path, "schema file"), source=str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "schema") -> TabularSchema:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in exc.errors())
            raise ConfigError(f"{source}: {problems}") from None


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, _ALL_KEYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key '{where}'{hint}"
    return f"'{where}': {str(err['msg']).removeprefix('Value error, ')}"


_ALL_KEYS = sorted(
    set(FeatureSpec.model_fields) | set(TargetSpec.model_fields) | set(TabularSchema.model_fields)
)

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
