"""BreastMNIST and RetinaMNIST dealt to simulated sites, each with its own test set."""

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.files import data_folder
from fedcare.data.medmnist import load_arrays, load_medmnist


def rows_as_bytes(x: np.ndarray) -> list[bytes]:
    return sorted(row.tobytes() for row in x.reshape(len(x), -1))


def test_breastmnist_is_binary_single_channel_in_unit_range():
    ds = load_medmnist("breastmnist", num_sites=3, seed=1)
    assert ds.input_shape == (1, 28, 28)
    assert (ds.task, ds.num_classes) == ("binary", 2)
    for site in ds.sites:
        assert site.x_train.shape[1:] == (1, 28, 28)
        assert site.x_train.dtype == np.float32 and site.y_train.dtype == np.int64
        assert site.x_train.min() >= 0.0 and site.x_train.max() <= 1.0
        assert site.num_test > 0


def test_retinamnist_is_five_grades_channels_first():
    ds = load_medmnist("retinamnist", num_sites=2, partition="dirichlet", alpha=0.5, seed=0)
    assert ds.input_shape == (3, 28, 28)
    assert (ds.task, ds.num_classes) == ("multiclass", 5)
    raw = load_arrays("retinamnist")["train_images"]  # (N, 28, 28, 3) as shipped
    assert raw.shape[-1] == 3


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_every_train_and_test_row_lands_at_exactly_one_site(partition):
    ds = load_medmnist("breastmnist", num_sites=4, partition=partition, alpha=0.5, seed=2)
    arrays = load_arrays("breastmnist")
    for split in ("train", "test"):
        dealt = np.concatenate([getattr(s, f"x_{split}") for s in ds.sites])
        original = arrays[f"{split}_images"].astype(np.float32)[:, None] / 255.0
        assert rows_as_bytes(dealt) == rows_as_bytes(original)
        labels = np.concatenate([getattr(s, f"y_{split}") for s in ds.sites])
        np.testing.assert_array_equal(
            np.bincount(labels), np.bincount(arrays[f"{split}_labels"].reshape(-1))
        )


def test_dirichlet_skews_label_balance_across_sites():
    def spread(partition: str) -> float:
        ds = load_medmnist("breastmnist", num_sites=5, partition=partition, alpha=0.1, seed=0)
        return float(np.std([s.y_train.mean() for s in ds.sites]))

    assert spread("dirichlet") > 3 * spread("iid")


def test_partition_is_reproducible_by_seed():
    a = load_medmnist("breastmnist", num_sites=4, seed=3)
    b = load_medmnist("breastmnist", num_sites=4, seed=3)
    c = load_medmnist("breastmnist", num_sites=4, seed=4)
    np.testing.assert_array_equal(a.sites[0].x_train, b.sites[0].x_train)
    assert not np.array_equal(a.sites[0].x_train, c.sites[0].x_train)


def test_validation_rows_can_join_training():
    ds = load_medmnist("breastmnist", num_sites=2, include_val_in_train=True)
    assert sum(s.num_train for s in ds.sites) == 546 + 78


def test_bad_names_and_partitions_are_config_errors():
    with pytest.raises(ConfigError, match="breastmnist"):
        load_medmnist("chestmnist", num_sites=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'iid' or 'dirichlet'"):
        load_medmnist("breastmnist", num_sites=2, partition="label")  # type: ignore[arg-type]


def test_source_cites_medmnist_and_npz_is_loaded_without_pickle():
    ds = load_medmnist("retinamnist", num_sites=2)
    assert "MedMNIST v2" in ds.source and ds.extra["license"] == "CC BY 4.0"
    assert data_folder("medmnist").joinpath("retinamnist.npz").is_file()
