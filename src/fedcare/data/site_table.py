"""One hospital's own table in a deployed study: the plan's data section, checked and encoded.

A deployed tabular study sends each site, inside the job plan its owner approves, what the
site needs to turn its file into the same columns as every other site: the schema (with its
hash), the feature space the schema fixes (one-hot vocabularies, missing-value indicators)
and the train/test split. The site checks its file against that schema before it takes part,
then encodes its rows without anything about them leaving the hospital: numeric features are
z-scored with the site's own training rows (``normalise: site``). The simulator's default
(``normalise: site``) gives the identical encoding, and each run's plan carries the split
seed the simulator uses for that run's seed (:func:`fedcare.data.tabular.run_split`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.base import SiteData, one_class_problem
from fedcare.data.harmonise import fixed_encoding, site_encoding
from fedcare.data.schema import TabularSchema, ValidationIssue
from fedcare.data.table_checks import check_table
from fedcare.data.table_file import read_table_file
from fedcare.data.tabular import (
    SplitSource,
    encode_site,
    refuse_entry_for_training,
    run_split,
    split_settings,
    split_site,
)

KIND = "table"
NORMALISE = "site"  # the only mode a deployed site can run without sharing statistics


def _canonical(value: Any) -> Any:
    """Integral floats as ints (YAML's 1 and JSON's 1.0 are the same schema)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def schema_hash(schema: TabularSchema) -> str:
    """SHA-256 of the schema's canonical JSON (what every site checks its file against)."""
    data = _canonical(schema.model_dump(mode="json"))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SiteTableSpec:
    """What a job plan tells a site about its table: schema, feature space, split."""

    schema: TabularSchema
    test_fraction: float
    split_seed: int
    split_source: SplitSource | None = None  # what chose split_seed (None in older plans)

    @classmethod
    def from_study(cls, params: dict[str, Any], run_seed: int = 0) -> SiteTableSpec:
        """From a study's ``dataset.params`` (schema path, test_fraction, seed, normalise),
        for the run with ``run_seed``: its split is the simulator's for that seed."""
        if "schema" not in params:
            raise ConfigError("tabular dataset: 'params.schema' (the schema file) is required")
        normalise = params.get("normalise", NORMALISE)
        if normalise not in ("pooled", NORMALISE):
            raise ConfigError(
                f"tabular dataset: normalise must be 'pooled' or 'site', found {normalise!r}"
            )
        schema = TabularSchema.load(params["schema"])
        fixed_encoding(schema)  # undeclared categories cannot be deployed
        refuse_entry_for_training(schema)
        split = run_split(schema, params.get("seed"), run_seed)
        fraction, seed = split_settings(schema, params.get("test_fraction"), split.seed)
        return cls(schema, fraction, seed, split.source)

    @property
    def hash(self) -> str:
        return schema_hash(self.schema)

    @property
    def num_classes(self) -> int:
        return self.schema.num_classes

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        vocabularies, indicators = fixed_encoding(self.schema)
        for f in self.schema.features:
            if f.type == "categorical":
                names += [f"{f.name}={v}" for v in vocabularies[f.name]]
            else:
                names += [f.name] + ([f"{f.name}_missing"] if f.name in indicators else [])
        return names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        """The plan's ``data`` section (JSON, hashed with the rest of the plan)."""
        vocabularies, indicators = fixed_encoding(self.schema)
        return {
            "kind": KIND,
            "schema": self.schema.model_dump(mode="json"),
            "schema_hash": self.hash,
            "encoding": {
                "normalise": NORMALISE,
                "features": self.feature_names,
                "vocabularies": vocabularies,
                "indicators": indicators,
            },
            "split": {"test_fraction": self.test_fraction, "seed": self.split_seed}
            | ({"source": self.split_source} if self.split_source else {}),
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "job plan 'data'") -> SiteTableSpec:
        """Parse a plan's data section; refuse one whose parts disagree with each other."""
        if not isinstance(raw, dict) or raw.get("kind") != KIND:
            found = raw.get("kind") if isinstance(raw, dict) else type(raw).__name__
            raise ConfigError(f"{where}: expected kind '{KIND}', found {found!r}")
        try:
            schema = TabularSchema.parse(raw["schema"], source=f"{where}.schema")
            split = raw["split"]
            source = split.get("source")
            spec = cls(schema, float(split["test_fraction"]), int(split["seed"]), source)
            encoding = dict(raw["encoding"])
            announced = str(raw["schema_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where} is malformed: {type(exc).__name__} {exc}") from exc
        if announced != spec.hash:
            raise ConfigError(
                f"{where}: schema announced hash {announced[:16]}…, but it hashes to "
                f"{spec.hash[:16]}…"
            )
        if encoding.get("normalise") != NORMALISE:
            raise ConfigError(
                f"{where}.encoding: expected normalise '{NORMALISE}', "
                f"found {encoding.get('normalise')!r}"
            )
        vocabularies, indicators = fixed_encoding(schema)
        expected = {"features": spec.feature_names, "vocabularies": vocabularies}
        for key, value in {**expected, "indicators": indicators}.items():
            if encoding.get(key) != value:
                raise ConfigError(
                    f"{where}.encoding.{key}: the schema gives {value}, "
                    f"the plan says {encoding.get(key)}"
                )
        split_settings(schema, spec.test_fraction, spec.split_seed)  # fraction within (0, 1)
        if source not in (None, *get_args(SplitSource)):
            raise ConfigError(
                f"{where}.split.source: expected one of {list(get_args(SplitSource))}, "
                f"found {source!r}"
            )
        return spec


@dataclass(frozen=True)
class TableCheck:
    """A site's file checked against the plan's schema: counts only, never rows."""

    summary: dict[str, Any]
    errors: list[ValidationIssue]
    frame: pd.DataFrame | None  # None when the file could not be read
    warnings: list[ValidationIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.frame is not None


def _unreadable(site: str, path: Path, exc: DataValidationError) -> ValidationIssue:
    return ValidationIssue(
        "error", exc.problem, site, exc.file or str(path), expected=exc.expected, found=exc.found
    )


def read_table(site: str, path: Path) -> TableCheck:
    """The checks a site can make before it knows the schema: the file exists and parses.

    The file is read exactly as the simulator reads it (:func:`read_table_file`).
    """
    try:
        read = read_table_file(site, Path(path))
    except DataValidationError as exc:
        return TableCheck({"file": Path(path).name}, [_unreadable(site, path, exc)], None)
    frame = read.frame
    errors = []
    if frame.empty:
        errors.append(ValidationIssue("error", "the table has no rows", site, str(path)))
    summary = {"file": Path(path).name, "rows": len(frame), "columns": len(frame.columns)}
    return TableCheck(summary, errors, frame, read.warnings)


def check_site_table(spec: SiteTableSpec, site: str, path: Path, index: int) -> TableCheck:
    """Every problem of this site's file against the plan's schema, and its counts.

    ``index`` is the site's position in the plan (it keys the seeded train/test split).
    """
    read = read_table(site, path)
    if read.frame is None:
        return read
    issues = check_table(site, str(path), read.frame, spec.schema)
    errors = [i for i in issues if i.severity == "error"]
    warnings = read.warnings + [i for i in issues if i.severity == "warning"]
    summary = {**read.summary, "schema_hash": spec.hash, "num_features": spec.num_features}
    if not errors:
        labels, test = split_site(
            read.frame, spec.schema, spec.test_fraction, spec.split_seed, index
        )
        summary.update(num_train=int((~test).sum()), num_test=int(test.sum()))
        if not (~test).any():
            errors.append(
                ValidationIssue(
                    "error",
                    "no training rows after the train/test split",
                    site,
                    str(path),
                    expected=f"rows beyond the test share {spec.test_fraction}",
                    found=f"{len(read.frame)} row(s)",
                )
            )
        warnings += _one_class(spec, site, str(path), labels[~test])
    return TableCheck(summary, errors, read.frame, warnings)


def _one_class(
    spec: SiteTableSpec, site: str, file: str, train_labels: npt.NDArray[np.int64]
) -> list[ValidationIssue]:
    """The simulator's one-class warning, for this site's training rows."""
    if spec.schema.target is None:  # survival: the table checks warn of a site with no event
        return []
    problem = one_class_problem(train_labels, spec.schema.target.class_names)
    column = spec.schema.target.column
    return [] if problem is None else [ValidationIssue("warning", problem, site, file, column)]


def load_site_table(spec: SiteTableSpec, site: str, path: Path, index: int) -> SiteData:
    """This site's rows as the plan's feature matrix (raises every problem at once)."""
    check = check_site_table(spec, site, path, index)
    if not check.ok or check.frame is None:
        lines = "\n  - ".join(str(i) for i in check.errors)
        raise DataValidationError(f"{len(check.errors)} data problem(s) found:\n  - {lines}")
    frame = check.frame
    labels, test = split_site(frame, spec.schema, spec.test_fraction, spec.split_seed, index)
    encoding = site_encoding(site, frame[~test], spec.schema)
    return encode_site(site, frame, spec.schema, labels, test, encoding)
