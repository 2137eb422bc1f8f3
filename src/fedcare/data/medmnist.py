"""BreastMNIST and RetinaMNIST (MedMNIST v2, 28x28) partitioned into simulated sites.

They have no natural hospital split, so train and test rows are dealt to sites IID or by
Dirichlet label skew, each site getting its own test rows under the same rule.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.data.files import data_folder
from fedcare.data.partition import dirichlet_label_partition, iid_partition

MedName = Literal["breastmnist", "retinamnist"]
_INFO = {
    "breastmnist": {
        "classes": ["malignant", "normal/benign"],
        "description": "Breast ultrasound (BUSI), malignant vs normal/benign, 1x28x28.",
        "source": "MedMNIST v2 (Yang et al., Scientific Data 2023), CC BY 4.0; source data: "
        "Al-Dhabyani et al. 2020 (BUSI).",
    },
    "retinamnist": {
        "classes": [f"grade {i}" for i in range(5)],
        "description": "Fundus photographs (DeepDRiD), diabetic retinopathy grade 0-4, 3x28x28.",
        "source": "MedMNIST v2 (Yang et al., Scientific Data 2023), CC BY 4.0; source data: DeepDRiD.",
    },
}


def load_arrays(name: MedName) -> dict[str, np.ndarray]:
    if name not in _INFO:
        raise ConfigError(f"unknown MedMNIST dataset '{name}'; expected one of {sorted(_INFO)}")
    raw = data_folder("medmnist").joinpath(f"{name}.npz").read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _images(array: np.ndarray) -> np.ndarray:
    x = array.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)


def load_medmnist(
    name: MedName,
    num_sites: int = 4,
    partition: Literal["iid", "dirichlet"] = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    include_val_in_train: bool = False,
) -> FederatedDataset:
    """``name`` dealt to ``num_sites`` simulated sites, images (N, C, 28, 28) in [0, 1].

    Train and test rows are partitioned by the same rule and seed stream, in separate
    draws, so every site has its own test set for per-site evaluation.
    """
    if partition not in ("iid", "dirichlet"):
        raise ConfigError(f"unknown partition '{partition}'; expected 'iid' or 'dirichlet'")
    arrays = load_arrays(name)
    x_train, y_train = (
        _images(arrays["train_images"]),
        arrays["train_labels"].reshape(-1).astype(np.int64),
    )
    if include_val_in_train:
        x_train = np.concatenate([x_train, _images(arrays["val_images"])])
        y_train = np.concatenate([y_train, arrays["val_labels"].reshape(-1).astype(np.int64)])
    x_test, y_test = (
        _images(arrays["test_images"]),
        arrays["test_labels"].reshape(-1).astype(np.int64),
    )
    seeds = SeedStream(seed)
    if partition == "iid":
        train_parts = iid_partition(len(y_train), num_sites, seeds.generator("partition", 0))
        test_parts = iid_partition(len(y_test), num_sites, seeds.generator("partition", 1))
    else:
        train_parts = dirichlet_label_partition(
            y_train, num_sites, alpha, seeds.generator("partition", 0)
        )
        test_parts = dirichlet_label_partition(
            y_test, num_sites, alpha, seeds.generator("partition", 1), min_per_site=1
        )
    sites = [
        SiteData(f"site{i}", x_train[tr], y_train[tr], x_test[te], y_test[te])
        for i, (tr, te) in enumerate(zip(train_parts, test_parts, strict=True))
    ]
    info = _INFO[name]
    classes = list(info["classes"])
    return FederatedDataset(
        name=name,
        sites=sites,
        task="binary" if len(classes) == 2 else "multiclass",
        num_classes=len(classes),
        input_shape=tuple(x_train.shape[1:]),
        class_names=classes,
        description=f"{info['description']} Partition: {partition}"
        + (f" (alpha={alpha})" if partition == "dirichlet" else "")
        + f", {num_sites} sites, seed {seed}.",
        source=str(info["source"]),
        extra={"license": "CC BY 4.0"},
    )
