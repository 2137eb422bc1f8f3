"""Datasets by name, as a study config or ``fedcare datasets`` names them."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset
from fedcare.data.heart import load_heart_disease
from fedcare.data.medmnist import load_medmnist
from fedcare.data.synthetic import make_synthetic
from fedcare.data.tabular import load_tabular_sites

_LOADERS: dict[str, Callable[..., FederatedDataset]] = {
    "heart-disease": load_heart_disease,
    "breastmnist": lambda **p: load_medmnist("breastmnist", **p),
    "retinamnist": lambda **p: load_medmnist("retinamnist", **p),
    "synthetic": make_synthetic,
    "tabular": load_tabular_sites,
}
_SHIPPED = ("heart-disease", "breastmnist", "retinamnist", "synthetic")


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, **params: Any) -> FederatedDataset:
    loader = _LOADERS.get(name)
    if loader is None:
        close = difflib.get_close_matches(name, list(_LOADERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown dataset '{name}'{hint} Known datasets: {', '.join(dataset_names())}"
        )
    try:
        return loader(**params)
    except TypeError as exc:
        raise ConfigError(f"dataset '{name}': bad parameters {sorted(params)}: {exc}") from exc


def describe_dataset(name: str, **params: Any) -> dict[str, Any]:
    """Sites, rows, label balance, features and attribution (tabular needs its params)."""
    if name == "tabular" and not params:
        return {
            "name": "tabular",
            "description": "Your own tables: one CSV/Parquet file per site plus a schema "
            "(params: schema, files, test_fraction, seed, strict).",
        }
    ds = load_dataset(name, **params)
    return {
        "name": ds.name,
        "task": ds.task,
        "num_classes": ds.num_classes,
        "classes": ds.class_names,
        "input_shape": list(ds.input_shape),
        "num_features": int(np.prod(ds.input_shape)),
        "features": ds.feature_names,
        "sites": [
            {
                "name": s.name,
                "train": s.num_train,
                "test": s.num_test,
                "label_share_train": np.bincount(s.y_train, minlength=ds.num_classes)
                .round(0)
                .tolist(),
            }
            for s in ds.sites
        ],
        "license": ds.extra.get("license", "-"),
        "description": ds.description,
        "source": ds.source,
    }


def shipped_datasets() -> tuple[str, ...]:
    return _SHIPPED
