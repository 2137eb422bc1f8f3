"""A hospital's own tables: one CSV or Parquet file per site plus a declared schema.

``validate_sites`` checks every site's file and collects every problem; ``load_tabular_sites``
validates, splits each site's rows into train/test (seeded, stratified), harmonises the
features through per-site aggregates and returns a :class:`FederatedDataset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.harmonise import binary_values, category_strings, combine, encode, site_aggregates
from fedcare.data.schema import Severity, TabularSchema, ValidationIssue, ValidationReport

_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def read_site_table(site: str, path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError("file not found", site=site, file=str(path))
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataValidationError(
            "unsupported file type",
            site=site,
            file=str(path),
            expected=".csv or .parquet",
            found=path.suffix or "none",
        )
    try:
        frame: pd.DataFrame = reader(path)  # type: ignore[operator]
        return frame
    except Exception as exc:  # any parser failure is a data problem, reported in one line
        raise DataValidationError(
            f"cannot read the file: {exc}", site=site, file=str(path)
        ) from exc


def label_array(frame: pd.DataFrame, schema: TabularSchema) -> npt.NDArray[np.int64]:
    """Class indices from the target column (NaN rows must be rejected before)."""
    text = category_strings(frame[schema.target.column]).reindex(frame.index)
    if schema.target.positive is not None:
        positive = {
            str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            for v in schema.target.positive
        }
        return np.asarray(text.isin(positive), dtype=np.int64)
    classes = [
        str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        for v in schema.target.classes or []
    ]
    return np.asarray(text.map({c: i for i, c in enumerate(classes)}), dtype=np.int64)


def validate_table(
    site: str, file: str, frame: pd.DataFrame, schema: TabularSchema
) -> list[ValidationIssue]:
    """Every problem in one site's table, none raised."""
    issues: list[ValidationIssue] = []

    def add(
        problem: str, column: str | None, expected: str | None = None, found: str | None = None
    ) -> None:
        issues.append(ValidationIssue("error", problem, site, file, column, expected, found))

    if frame.empty:
        add("the table has no rows", None)
        return issues
    target = schema.target.column
    needed = [target] + [f.name for f in schema.features if f.required]
    if schema.split_column:
        needed.append(schema.split_column)
    for column in needed:
        if column not in frame.columns:
            add(
                "missing column",
                column,
                expected="a column of that name",
                found=f"columns {list(frame.columns)[:12]}",
            )
    for f in schema.features:
        if f.name not in frame.columns:
            continue
        series = frame[f.name]
        if series.isna().all():
            add("column is entirely missing", f.name)
            continue
        if f.type == "numeric":
            values = pd.to_numeric(series, errors="coerce")
            bad = series.notna() & values.isna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                add(
                    "non-numeric value in a numeric column",
                    f.name,
                    "numbers",
                    f"{series.iloc[row]!r} in row {row + 2}",
                )
            low = f.min if f.min is not None else -np.inf
            high = f.max if f.max is not None else np.inf
            out = (values < low) | (values > high)
            if out.any():
                example = values[out].iloc[0]
                add(
                    f"{int(out.sum())} value(s) out of the declared range",
                    f.name,
                    f"[{low}, {high}]",
                    f"e.g. {example}",
                )
        elif f.type == "binary":
            recognised = binary_values(series)
            bad = series.notna() & recognised.isna()
            if bad.any():
                add(
                    "value is not binary",
                    f.name,
                    "0/1, true/false or yes/no",
                    repr(series[bad].iloc[0]),
                )
        elif f.categories is not None:
            unknown = sorted(set(category_strings(series)) - set(f.categories))
            if unknown:
                add(
                    "category not in the declared list",
                    f.name,
                    f"one of {f.categories}",
                    f"{unknown[:5]}",
                )
    if target in frame.columns:
        labels = frame[target]
        if labels.isna().any():
            add(f"{int(labels.isna().sum())} row(s) have no label", target)
        present = set(category_strings(labels))
        if schema.target.classes is not None:
            declared = {str(c) for c in schema.target.classes}
            unknown = sorted(present - declared)
            if unknown:
                add(
                    "label not among the declared classes",
                    target,
                    f"one of {sorted(declared)}",
                    str(unknown[:5]),
                )
        elif labels.notna().all() and len(np.unique(label_array(frame, schema))) < 2:
            add(
                "the label has only one class at this site",
                target,
                "both classes",
                f"only {sorted(present)[:3]}",
            )
    if schema.split_column and schema.split_column in frame.columns:
        split_values = set(category_strings(frame[schema.split_column]))
        if not split_values <= {"train", "test"}:
            add(
                "split column must hold 'train' or 'test'",
                schema.split_column,
                "train/test",
                str(sorted(split_values)[:5]),
            )
    return issues


def validate_sites(
    schema: TabularSchema, files: Mapping[str, Path], *, strict: bool = False
) -> ValidationReport:
    """Check every site; cross-site problems (a category seen at one site only) included."""
    report = ValidationReport()
    frames: dict[str, pd.DataFrame] = {}
    for site, path in files.items():
        try:
            frames[site] = read_site_table(site, Path(path))
        except DataValidationError as exc:
            report.issues.append(
                ValidationIssue(
                    "error", exc.problem, site, str(path), expected=exc.expected, found=exc.found
                )
            )
            continue
        report.issues += validate_table(site, str(path), frames[site], schema)
    if report.ok and frames:
        aggregates = [site_aggregates(s, f, schema) for s, f in frames.items()]
        _, cross = combine(aggregates, schema, {s: str(p) for s, p in files.items()})
        severity: Severity = "error" if strict else "warning"
        report.issues += [
            ValidationIssue(severity, i.problem, i.site, i.file, i.column, i.expected, i.found)
            for i in cross
        ]
    return report


def _split(
    frame: pd.DataFrame,
    labels: npt.NDArray[np.int64],
    schema: TabularSchema,
    test_fraction: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """True for test rows: the declared split column, else a seeded stratified split."""
    if schema.split_column:
        return (
            category_strings(frame[schema.split_column]).reindex(frame.index).eq("test").to_numpy()
        )
    is_test = np.zeros(len(frame), dtype=bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        is_test[rows[: round(test_fraction * len(rows))]] = True
    return is_test


def load_tabular_sites(
    schema: TabularSchema | Path | str,
    files: Mapping[str, Path | str],
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    strict: bool = False,
    name: str = "tabular",
) -> FederatedDataset:
    if not isinstance(schema, TabularSchema):
        schema = TabularSchema.load(schema)
    if not files:
        raise ConfigError("tabular dataset: 'files' must map at least one site name to a file")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"tabular dataset: test_fraction must be in (0, 1), found {test_fraction}"
        )
    paths = {site: Path(p) for site, p in files.items()}
    validate_sites(schema, paths, strict=strict).raise_if_errors()
    seeds = SeedStream(seed)
    frames, labels, test_masks = {}, {}, {}
    for i, (site, path) in enumerate(paths.items()):
        frame = read_site_table(site, path).reset_index(drop=True)
        frames[site] = frame
        labels[site] = label_array(frame, schema)
        test_masks[site] = _split(
            frame, labels[site], schema, test_fraction, seeds.generator("partition", 0, i)
        )
    aggregates = [site_aggregates(site, frames[site][~test_masks[site]], schema) for site in paths]
    encoding, _ = combine(aggregates, schema, {s: str(p) for s, p in paths.items()})
    sites = []
    for site in paths:
        x = encode(frames[site], schema, encoding)
        test = test_masks[site]
        sites.append(SiteData(site, x[~test], labels[site][~test], x[test], labels[site][test]))
    num_classes = schema.target.num_classes
    return FederatedDataset(
        name=name,
        sites=sites,
        task="binary" if num_classes == 2 else "multiclass",
        num_classes=num_classes,
        input_shape=(sites[0].x_train.shape[1],),
        feature_names=encoding.feature_names(schema),
        class_names=[str(c) for c in schema.target.classes]
        if schema.target.classes
        else ["negative", "positive"],
        description=f"User tables from {len(sites)} sites: "
        + ", ".join(f"{s}={p.name}" for s, p in paths.items()),
        source="user-provided data",
    )
