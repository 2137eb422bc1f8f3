import numpy as np

from fedcare.data.medmnist import load_medmnist


def test_breastmnist_is_binary_single_channel_and_covers_all_rows():
    ds = load_medmnist("breastmnist", num_sites=3, seed=1)
    assert ds.input_shape == (1, 28, 28)
    assert ds.task == "binary"
    assert sum(s.num_train for s in ds.sites) == 546
    assert sum(s.num_test for s in ds.sites) == 156
    x = ds.sites[0].x_train
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_retinamnist_is_five_grades_channels_first():
    ds = load_medmnist("retinamnist", num_sites=2, partition="dirichlet", alpha=0.5, seed=0)
    assert ds.input_shape == (3, 28, 28)
    assert ds.num_classes == 5
    assert sum(s.num_train for s in ds.sites) == 1080


def test_partition_is_reproducible_by_seed():
    a = load_medmnist("breastmnist", num_sites=4, seed=3)
    b = load_medmnist("breastmnist", num_sites=4, seed=3)
    c = load_medmnist("breastmnist", num_sites=4, seed=4)
    assert np.array_equal(a.sites[0].y_train, b.sites[0].y_train)
    assert not np.array_equal(a.sites[0].x_train, c.sites[0].x_train)


def test_validation_rows_can_join_training():
    ds = load_medmnist("breastmnist", num_sites=2, include_val_in_train=True)
    assert sum(s.num_train for s in ds.sites) == 546 + 78
