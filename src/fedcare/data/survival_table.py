"""A site's own file, checked against the schema, as rows for federated analyses.

The same checks as for training (:func:`fedcare.data.table_checks.check_table`, the one
code the simulator and a deployed site run) come first; every error of the file is raised
at once and warnings (a site where every row is censored, a delimiter other than a comma)
are returned. Only the columns the schema declares leave this function: identifiers or free
text in the file never reach an analysis. Units are the file's own: nothing is imputed,
encoded or standardised, since a table one or a Kaplan-Meier curve reports raw values.

Columns of the analysis frame:

- numeric features: float, NaN where missing; binary features: 0.0/1.0, NaN where missing;
  categorical features: the category text, NaN where missing. An optional feature the file
  lacks is a column of NaN, so every site's frame has the same columns;
- a classification target: its class name (``negative``/``positive`` or the class value);
- survival roles: ``time`` and ``entry`` as float, ``event`` as 1.0 (event) or 0.0
  (censored) from the declared event values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedcare.data.harmonise import category_strings, numeric_values
from fedcare.data.schema import TabularSchema, ValidationIssue, ValidationReport
from fedcare.data.table_checks import check_table
from fedcare.data.table_file import read_table_file


@dataclass(frozen=True)
class AnalysisRows:
    """One site's checked rows and the names of their survival roles (None if undeclared)."""

    site: str
    frame: pd.DataFrame
    source: str
    time: str | None = None
    event: str | None = None
    entry: str | None = None
    warnings: list[ValidationIssue] = field(default_factory=list)


def analysis_frame(frame: pd.DataFrame, schema: TabularSchema) -> pd.DataFrame:
    """The declared columns of an already checked table, in analysis form (see above)."""
    columns: dict[str, pd.Series] = {}
    for feature in schema.features:
        if feature.type == "categorical":
            if feature.name in frame:
                text = category_strings(frame[feature.name]).reindex(frame.index)
            else:
                text = pd.Series(np.nan, index=frame.index, dtype=object)
            columns[feature.name] = text.astype(object)
        else:
            columns[feature.name] = pd.Series(numeric_values(frame, feature), index=frame.index)
    if schema.target is not None:
        names = dict(zip(range(schema.num_classes), schema.class_names, strict=True))
        index = schema.target.class_index
        labels = category_strings(frame[schema.target.column]).map(index).map(names)
        columns[schema.target.column] = labels.reindex(frame.index).astype(object)
    if schema.survival is not None:
        spec = schema.survival
        for role in (spec.time, spec.entry):
            if role is not None:
                columns[role] = pd.to_numeric(frame[role]).astype(np.float64)
        events = category_strings(frame[spec.event]).map(spec.event_index)
        columns[spec.event] = events.reindex(frame.index).astype(np.float64)
    return pd.DataFrame(columns, index=frame.index).reset_index(drop=True)


def load_analysis_rows(schema: TabularSchema | Path | str, site: str, path: Path) -> AnalysisRows:
    """Read and check ``site``'s file against ``schema``; raise every error in one go
    (:class:`~fedcare.data.schema.TabularValidationError`), return the rows and warnings."""
    if not isinstance(schema, TabularSchema):
        schema = TabularSchema.load(schema)
    read = read_table_file(site, Path(path))  # an unreadable file raises, naming site and file
    issues = read.warnings + check_table(site, str(path), read.frame, schema)
    report = ValidationReport(issues)
    report.raise_if_errors()
    spec = schema.survival
    return AnalysisRows(
        site=site,
        frame=analysis_frame(read.frame, schema),
        source=str(path),
        time=spec.time if spec else None,
        event=spec.event if spec else None,
        entry=spec.entry if spec else None,
        warnings=report.warnings,
    )
