"""Each site's rows for a simulated query, as :class:`~fedcare.stats.protocol.SiteTable`.

- ``tcga-brca``: the six regions with their 39 features, ``T`` (days) and ``E``, in the
  FLamby split (``fedcare.stats.site_tables``);
- ``tabular``: hospitals' own files, each checked against the schema by the code a deployed
  site runs (errors naming site, file, row and column; warnings such as an all-censored
  site are returned to be shown);
- any other registered tabular dataset (``heart-disease``, ``synthetic``): its feature
  matrix, one column per feature under its name plus the class index as ``label``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.registry import load_dataset
from fedcare.data.tcga_brca import SITES as TCGA_SITES
from fedcare.stats.protocol import SiteTable
from fedcare.stats.site_tables import tcga_brca_site_tables, user_site_table

LABEL = "label"


@dataclass(frozen=True)
class AnalysisData:
    tables: dict[str, SiteTable]
    warnings: list[str] = field(default_factory=list)


def site_tables(name: str, params: Mapping[str, Any], split: str) -> AnalysisData:
    """Every site's table of ``split`` ("train", "test" or "all") for dataset ``name``."""
    if name == "tcga-brca":
        if params:
            raise ConfigError(f"dataset 'tcga-brca' takes no params here, found {sorted(params)}")
        return AnalysisData(tcga_brca_site_tables(split))  # type: ignore[arg-type]
    if name == "tabular":
        return _own_tables(params, split)
    if name == "heart-disease" and "normalisation" not in params:
        params = {**params, "normalisation": "none"}  # describe raw units, not z-scores
    return AnalysisData(tables_from_dataset(load_dataset(name, **params), split))


def _own_tables(params: Mapping[str, Any], split: str) -> AnalysisData:
    unknown = sorted(set(params) - {"schema", "files"})
    if unknown or "schema" not in params or not isinstance(params.get("files"), dict):
        raise ConfigError(
            "dataset 'tabular' takes params {schema: FILE, files: {SITE: FILE, ...}}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    if split != "all":
        raise ConfigError(
            f"split '{split}' on hospitals' own tables: an analysis reads every row of each "
            "site's file; use 'split: all' (or give each site the file of the rows to analyse)"
        )
    tables: dict[str, SiteTable] = {}
    warnings: list[str] = []
    for site, path in params["files"].items():
        table, issues = user_site_table(params["schema"], str(site), path)
        tables[str(site)] = table
        warnings += [str(issue) for issue in issues]
    return AnalysisData(tables, warnings)


def tables_from_dataset(dataset: FederatedDataset, split: str) -> dict[str, SiteTable]:
    """Site tables from a loaded dataset's feature matrices (tabular datasets only)."""
    if len(dataset.input_shape) != 1:
        raise ConfigError(
            f"dataset '{dataset.name}': analyses need a table of named columns; its inputs "
            f"have shape {dataset.input_shape} (images)"
        )
    names = dataset.feature_names or [f"x{i}" for i in range(dataset.input_shape[0])]
    return {site.name: _table(dataset, site, names, split) for site in dataset.sites}


def _table(dataset: FederatedDataset, site: SiteData, names: list[str], split: str) -> SiteTable:
    parts = {"train": [(site.x_train, site.y_train)], "test": [(site.x_test, site.y_test)]}
    chosen = parts["train"] + parts["test"] if split == "all" else parts[split]
    x = np.concatenate([p[0] for p in chosen]).astype(np.float64)
    y = np.concatenate([p[1] for p in chosen])
    frame = pd.DataFrame(x, columns=names)
    frame[LABEL] = y.astype(np.float64)
    return SiteTable(site=site.name, frame=frame, source=f"{dataset.name}:{site.name}")


def shipped_sites(name: str) -> list[str]:
    """The site names of a dataset that ships with fedcare (in its order)."""
    if name == "tcga-brca":
        return list(TCGA_SITES)
    return list(site_tables(name, {}, "all").tables)


def site_table_loader(data: str, schema: Path | None, site: str) -> Callable[[str], SiteTable]:
    """One deployed site's rows by split, from ``--data``: ``DATASET:SITE`` for shipped
    data, or a CSV/Parquet file checked against ``schema`` (every row: split ``all``)."""
    if schema is None:
        dataset, _, name = data.partition(":")
        if not name:
            raise ConfigError(
                f"--data '{data}': give DATASET:SITE (e.g. tcga-brca:northeast), or a file "
                "with --schema"
            )
        if dataset == "tabular":
            raise ConfigError("--data tabular:SITE: give the site's own file and --schema")

        @functools.cache
        def shipped(split: str) -> SiteTable:
            tables = site_tables(dataset, {}, split).tables
            if name not in tables:
                raise ConfigError(
                    f"--data '{data}': dataset '{dataset}' has no site '{name}' "
                    f"(its sites: {', '.join(tables)})"
                )
            return tables[name]

        return shipped
    table, issues = user_site_table(schema, site, data)
    for issue in issues:
        print(f"warning: {issue}")

    def own(split: str) -> SiteTable:
        if split != "all":
            raise ConfigError(
                f"the query plan asks for the '{split}' rows; a site's own file is analysed "
                "whole (split: all)"
            )
        return table

    return own
