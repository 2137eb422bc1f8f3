"""A hospital's own tables: one CSV or Parquet file per site plus a declared schema.

``validate_sites`` checks every site's file and collects every problem; ``load_tabular_sites``
validates, splits each site's rows into train/test (declared split column, or seeded and
stratified), harmonises the features through per-site aggregates and returns a
:class:`FederatedDataset`.

``normalise="site"`` (default) has each site z-score with its own training rows and take its
columns from the schema alone, which is what a deployed site does
(:mod:`fedcare.data.site_table`): the simulated study gives the deployed encoding exactly.
``normalise="pooled"`` z-scores every column with the statistics all sites' training rows
would give together (combined from per-site sums); no deployment can reproduce it, since
that would need statistics about each hospital's rows to leave it.

Which seed splits a run's rows is decided in one place, :func:`run_split`: the run seed,
unless the study pins one or the schema declares the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset, SiteData, one_class_sites
from fedcare.data.harmonise import (
    GlobalEncoding,
    category_strings,
    combine,
    encode,
    fixed_encoding,
    site_aggregates,
    site_encoding,
    site_only_categories,
)
from fedcare.data.schema import (
    Severity,
    SurvivalSpec,
    TabularSchema,
    ValidationIssue,
    ValidationReport,
)
from fedcare.data.table_checks import check_table
from fedcare.data.table_file import read_table_file

Normalise = Literal["pooled", "site"]
NORMALISE: tuple[Normalise, ...] = ("pooled", "site")


def label_array(frame: pd.DataFrame, schema: TabularSchema) -> npt.NDArray[np.int64]:
    """Class indices from the target column, by the declared values of each class; for a
    survival schema the event indicator (1 event, 0 censored) from its declared values.

    Validation reports missing and undeclared labels first; should one get here anyway it
    is an error, never a silent negative.
    """
    outcome = schema.survival or schema.label
    column = outcome.event if isinstance(outcome, SurvivalSpec) else outcome.column
    index = outcome.event_index if isinstance(outcome, SurvivalSpec) else outcome.class_index
    classes = category_strings(frame[column]).reindex(frame.index).map(index)
    if classes.isna().any():
        row = int(np.flatnonzero(classes.isna().to_numpy())[0])
        raise DataValidationError(
            f"label missing or not declared in row {row + 1}",
            column=column,
            expected=outcome.declared(),
            found=repr(frame[column].iloc[row]),
        )
    return np.asarray(classes, dtype=np.int64)


def time_array(frame: pd.DataFrame, schema: TabularSchema) -> npt.NDArray[np.float64] | None:
    """A survival schema's follow-up times (checked by validation first); None otherwise.

    Training uses time and event only: a declared ``entry`` (left truncation) is refused
    by :func:`refuse_entry_for_training` rather than silently dropped.
    """
    if schema.survival is None:
        return None
    return pd.to_numeric(frame[schema.survival.time]).to_numpy(dtype=np.float64)


def refuse_entry_for_training(schema: TabularSchema) -> None:
    """Survival models train on (time, event); delayed entry would be ignored, so refuse it."""
    if schema.survival is not None and schema.survival.entry is not None:
        raise ConfigError(
            f"tabular dataset: the schema declares survival.entry "
            f"('{schema.survival.entry}', left truncation), which survival analyses use but "
            "model training does not; remove it from the schema to train on time and event"
        )


def _read_and_validate(
    schema: TabularSchema, files: Mapping[str, Path | str], strict: bool
) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    report = ValidationReport()
    frames: dict[str, pd.DataFrame] = {}
    for site, path in files.items():
        try:
            read = read_table_file(site, Path(path))
        except DataValidationError as exc:
            report.issues.append(
                ValidationIssue(
                    "error", exc.problem, site, exc.file or str(path), None, exc.expected, exc.found
                )
            )
            continue
        frames[site] = read.frame
        report.issues += read.warnings + check_table(site, str(path), read.frame, schema)
    # Cross-site checks use aggregates only, exactly what the deployed coordinator sees.
    aggregates = [site_aggregates(site, frame, schema) for site, frame in frames.items()]
    severity: Severity = "error" if strict else "warning"
    report.issues += [
        ValidationIssue(severity, i.problem, i.site, i.file, i.column, i.expected, i.found)
        for i in site_only_categories(aggregates, schema, {s: str(p) for s, p in files.items()})
    ]
    return report, frames


def validate_sites(
    schema: TabularSchema | Path | str, files: Mapping[str, Path | str], *, strict: bool = False
) -> ValidationReport:
    """Every problem of every site, none raised. ``strict`` turns warnings into errors."""
    if not isinstance(schema, TabularSchema):
        schema = TabularSchema.load(schema)
    return _read_and_validate(schema, files, strict)[0]


def _test_rows(
    frame: pd.DataFrame,
    labels: npt.NDArray[np.int64],
    schema: TabularSchema,
    test_fraction: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """True for test rows: the declared split column, else a seeded split stratified by label."""
    if schema.split_column:
        split = category_strings(frame[schema.split_column]).reindex(frame.index)
        return split.eq("test").to_numpy()
    is_test = np.zeros(len(frame), dtype=bool)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        is_test[rows[: round(test_fraction * len(rows))]] = True
    return is_test


def split_settings(
    schema: TabularSchema, test_fraction: float | None, seed: int | None
) -> tuple[float, int]:
    """(test fraction, split seed): the arguments, else the schema's values, else 0.3 and 0."""
    fraction = test_fraction if test_fraction is not None else (schema.test_fraction or 0.3)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"tabular dataset: test_fraction must be in (0, 1), found {fraction}")
    return fraction, seed if seed is not None else (schema.seed or 0)


SplitSource = Literal["run seed", "dataset.params.seed", "schema seed", "split column"]


@dataclass(frozen=True)
class RunSplit:
    """How one run splits every site's rows into train and test, and what decided it."""

    source: SplitSource
    seed: int | None  # None when the schema's split column decides

    @property
    def follows_run(self) -> bool:
        """True when each run seed gives its own split (the study's seeds vary it)."""
        return self.source == "run seed"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed}


def run_split(schema: TabularSchema, pinned: int | None, run_seed: int) -> RunSplit:
    """The split of the run with ``run_seed``.

    A declared split column decides by itself; otherwise a seed the study pins
    (``dataset.params.seed``) or the schema's ``seed``; otherwise the run seed, so that a
    study's seeds measure how much the results move with the split, not only with the
    initial model. Simulator and deployed plan both ask here, so they split alike.
    """
    if schema.split_column:
        return RunSplit("split column", None)
    if pinned is not None:
        return RunSplit("dataset.params.seed", int(pinned))
    if schema.seed is not None:
        return RunSplit("schema seed", schema.seed)
    return RunSplit("run seed", run_seed)


def split_site(
    frame: pd.DataFrame, schema: TabularSchema, fraction: float, seed: int, index: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(labels, test-row mask) of the site at ``index`` in the study's site order."""
    labels = label_array(frame, schema)
    rng = SeedStream(seed).generator("partition", 0, index)
    return labels, _test_rows(frame, labels, schema, fraction, rng)


def encode_site(
    site: str,
    frame: pd.DataFrame,
    schema: TabularSchema,
    labels: npt.NDArray[np.int64],
    test: npt.NDArray[np.bool_],
    encoding: GlobalEncoding,
) -> SiteData:
    x = encode(frame, schema, encoding)
    time = time_array(frame, schema)
    if time is None:
        return SiteData(site, x[~test], labels[~test], x[test], labels[test])
    return SiteData(site, x[~test], labels[~test], x[test], labels[test], time[~test], time[test])


def load_tabular_sites(
    schema: TabularSchema | Path | str,
    files: Mapping[str, Path | str],
    *,
    test_fraction: float | None = None,
    seed: int | None = None,
    strict: bool = False,
    name: str = "tabular",
    normalise: Normalise = "site",
) -> FederatedDataset:
    """Validate, split, harmonise and encode each site's table; raise every problem at once.

    ``test_fraction`` and ``seed`` default to the schema's values, else 0.3 and 0 (a study
    passes each run's seed from :func:`run_split`). ``normalise``: each "site"'s own
    statistics, as deployed; or "pooled" statistics combined over sites (simulation only).
    """
    if not isinstance(schema, TabularSchema):
        schema = TabularSchema.load(schema)
    if not files:
        raise ConfigError("tabular dataset: 'files' must map at least one site name to a file")
    if normalise not in NORMALISE:
        raise ConfigError(
            f"tabular dataset: normalise must be one of {list(NORMALISE)}, found {normalise!r}"
        )
    fraction, split_seed = split_settings(schema, test_fraction, seed)
    refuse_entry_for_training(schema)
    if normalise == "site":
        fixed_encoding(schema)  # refuses undeclared categories before reading any file
    report, frames = _read_and_validate(schema, files, strict)
    report.raise_if_errors()

    splits = {
        site: split_site(frame, schema, fraction, split_seed, i)
        for i, (site, frame) in enumerate(frames.items())
    }
    # Statistics come from training rows only, so no test row shapes the encoding.
    train = {s: f[~splits[s][1]] for s, f in frames.items()}
    if normalise == "site":
        encodings = {s: site_encoding(s, rows, schema) for s, rows in train.items()}
    else:
        pooled = combine([site_aggregates(s, rows, schema) for s, rows in train.items()], schema)
        encodings = dict.fromkeys(frames, pooled)
    sites = [
        encode_site(site, frame, schema, *splits[site], encodings[site])
        for site, frame in frames.items()
    ]
    encoding = next(iter(encodings.values()))
    num_classes = schema.num_classes
    class_names = schema.class_names
    survival = schema.survival is not None
    return FederatedDataset(
        name=name,
        sites=sites,
        task="survival" if survival else "binary" if num_classes == 2 else "multiclass",
        num_classes=num_classes,
        input_shape=(sites[0].x_train.shape[1],),
        feature_names=encoding.feature_names(schema),
        class_names=class_names,
        description=f"User tables from {len(sites)} sites: "
        + ", ".join(f"{s}={Path(p).name}" for s, p in files.items()),
        source="user-provided data",
        extra={
            "encoding": encoding.to_dict()
            if normalise == "pooled"
            else {s: e.to_dict() for s, e in encodings.items()},
            "normalise": normalise,
            # A survival site with no event is warned about by the table checks instead.
            "warnings": [str(w) for w in report.warnings]
            + ([] if survival else one_class_sites(sites, class_names)),
        },
    )
