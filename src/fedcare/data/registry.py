"""Datasets by name, as a study config or ``fedcare datasets`` names them."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.heart import load_heart_disease
from fedcare.data.medmnist import load_medmnist
from fedcare.data.synthetic import make_synthetic
from fedcare.data.tabular import load_tabular_sites

_LOADERS: dict[str, Callable[..., FederatedDataset]] = {
    "heart-disease": load_heart_disease,
    "breastmnist": functools.partial(load_medmnist, "breastmnist"),
    "retinamnist": functools.partial(load_medmnist, "retinamnist"),
    "synthetic": make_synthetic,
    "tabular": load_tabular_sites,
}
_SHIPPED = ("heart-disease", "breastmnist", "retinamnist", "synthetic")


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, **params: Any) -> FederatedDataset:
    """The dataset called ``name``, built with ``params`` (its loader's keyword arguments)."""
    loader = _LOADERS.get(name)
    if loader is None:
        close = difflib.get_close_matches(name, list(_LOADERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ConfigError(
            f"unknown dataset '{name}'{hint} Known datasets: {', '.join(dataset_names())}"
        )
    # Check the parameters against the signature up front, so a TypeError raised inside a
    # loader is never mistaken for a configuration mistake.
    signature = inspect.signature(loader)
    try:
        signature.bind(**params)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in ("self",)]
        raise ConfigError(f"dataset '{name}': {exc}; it accepts {', '.join(accepted)}") from None
    return loader(**params)


def describe_dataset(name: str, **params: Any) -> dict[str, Any]:
    """Sites, rows, label balance, features and attribution (tabular needs its params)."""
    if name == "tabular" and not params:
        return {
            "name": "tabular",
            "description": "Your own tables: one CSV/Parquet file per site plus a schema "
            "(params: schema, files, test_fraction, seed, strict, normalise: pooled or site).",
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
        "sites": [_describe_site(s, ds.num_classes) for s in ds.sites],
        "license": ds.extra.get("license", "-"),
        "description": ds.description,
        "source": ds.source,
    }


def _describe_site(site: SiteData, num_classes: int) -> dict[str, Any]:
    counts_train = np.bincount(site.y_train, minlength=num_classes)
    return {
        "name": site.name,
        "train": site.num_train,
        "test": site.num_test,
        "label_counts_train": counts_train.tolist(),
        "label_counts_test": np.bincount(site.y_test, minlength=num_classes).tolist(),
        "label_share_train": (counts_train / max(site.num_train, 1)).round(3).tolist(),
    }


def shipped_datasets() -> tuple[str, ...]:
    return _SHIPPED
