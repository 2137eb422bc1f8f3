"""Each site's rows for a simulated query, as :class:`~fedcare.stats.protocol.SiteTable`.

A dataset that declares survival roles (time, event, entry) loads its tables through
``fedcare.data.survival_table`` when that module provides ``load_site_tables``; any other
registered dataset is read from its feature matrix: one column per feature under its
name, plus the label as ``label`` (its class index), for the rows of the chosen split.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.registry import load_dataset
from fedcare.stats.protocol import SiteTable

LABEL = "label"


def _survival_loader() -> Any:
    try:
        module = importlib.import_module("fedcare.data.survival_table")
    except ModuleNotFoundError:
        return None
    return getattr(module, "load_site_tables", None)


def site_tables(name: str, params: Mapping[str, Any], split: str) -> dict[str, SiteTable]:
    """Every site's table of ``split`` ("train", "test" or "all") for dataset ``name``."""
    loader = _survival_loader()
    if loader is not None:
        tables = loader(name, dict(params), split)
        if tables is not None:
            return dict(tables)
    if name == "heart-disease" and "normalisation" not in params:
        params = {**params, "normalisation": "none"}  # describe raw units, not z-scores
    return tables_from_dataset(load_dataset(name, **params), split)


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
