"""Datasets by name, as a study config or ``fedcare datasets`` names them."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.heart import load_heart_disease
from fedcare.data.medmnist import load_medmnist
from fedcare.data.schema import TabularSchema
from fedcare.data.schema_guide import SCHEMA_GUIDE
from fedcare.data.synthetic import make_synthetic
from fedcare.data.tabular import RunSplit, load_tabular_sites, run_split
from fedcare.data.tcga_brca import load_tcga_brca

_LOADERS: dict[str, Callable[..., FederatedDataset]] = {
    "heart-disease": load_heart_disease,
    "breastmnist": functools.partial(load_medmnist, "breastmnist"),
    "retinamnist": functools.partial(load_medmnist, "retinamnist"),
    "synthetic": make_synthetic,
    "tabular": load_tabular_sites,
    "tcga-brca": load_tcga_brca,
}
_SHIPPED = ("heart-disease", "breastmnist", "retinamnist", "synthetic", "tcga-brca")


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


def dataset_split(name: str, params: Mapping[str, Any], run_seed: int) -> RunSplit | None:
    """How the run with ``run_seed`` splits the dataset's rows into train and test.

    None where the split does not depend on the run: the shipped datasets fix theirs (the
    FLamby split, or a partition drawn from their own ``seed`` parameter). For hospitals'
    own tables see :func:`fedcare.data.tabular.run_split`; None too when the parameters name
    no schema (loading the dataset then says what is missing).
    """
    if name != "tabular" or "schema" not in params:
        return None
    return run_split(TabularSchema.load(params["schema"]), params.get("seed"), run_seed)


def dataset_params_for_run(
    name: str, params: Mapping[str, Any], run_seed: int
) -> tuple[dict[str, Any], RunSplit | None]:
    """(loader parameters, split) for the run with ``run_seed``: the study's parameters, with
    the split seed added when the split follows the run seed."""
    split = dataset_split(name, params, run_seed)
    if split is None or not split.follows_run:
        return dict(params), split
    return {**params, "seed": split.seed}, split


def describe_dataset(name: str, **params: Any) -> dict[str, Any]:
    """Sites, rows, label balance, features and attribution (tabular needs its params)."""
    if name == "tabular" and not params:
        return {
            "name": "tabular",
            "description": "Your own tables: one CSV/Parquet file per site plus a schema "
            "(params: schema, files, test_fraction, seed, strict, normalise). "
            "The train/test split follows each run's seed unless params.seed, the schema's "
            "seed or its split_column fixes it. normalise: site (default; each site z-scores "
            "with its own training rows, as a deployment does) or pooled (statistics of all "
            "sites combined; the simulator alone can run it, a deployment cannot reproduce it).",
            "schema": SCHEMA_GUIDE,
        }
    ds = load_dataset(name, **params)
    warnings = ds.extra.get("warnings")  # e.g. a site whose training rows are one class
    return {
        "name": ds.name,
        "task": ds.task,
        "num_classes": ds.num_classes,
        "classes": ds.class_names,
        "input_shape": list(ds.input_shape),
        "num_features": int(np.prod(ds.input_shape)),
        "features": ds.feature_names,
        "sites": [
            _describe_survival_site(s) if s.is_survival else _describe_site(s, ds.num_classes)
            for s in ds.sites
        ],
        "license": ds.extra.get("license", "-"),
        "description": ds.description,
        "source": ds.source,
        "warnings": warnings if isinstance(warnings, list) else [],
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


def _describe_survival_site(site: SiteData) -> dict[str, Any]:
    """Rows, events and follow-up: a survival site's label balance is its event rate."""
    facts: dict[str, Any] = {"name": site.name, "train": site.num_train, "test": site.num_test}
    for split in ("train", "test"):
        events = getattr(site, f"y_{split}")
        time = getattr(site, f"time_{split}")
        facts[f"events_{split}"] = int(events.sum())
        facts[f"event_share_{split}"] = round(float(events.mean()) if events.size else 0.0, 3)
        facts[f"median_time_{split}"] = float(np.median(time)) if time.size else None
    return facts


def shipped_datasets() -> tuple[str, ...]:
    return _SHIPPED
