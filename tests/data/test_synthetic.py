"""Synthetic federated data for scale tests: deterministic, learnable, skewable."""

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.synthetic import make_synthetic


def test_synthetic_is_deterministic_by_seed_and_shaped_as_asked():
    a = make_synthetic(num_sites=7, samples_per_site=50, num_features=5, seed=2)
    b = make_synthetic(num_sites=7, samples_per_site=50, num_features=5, seed=2)
    c = make_synthetic(num_sites=7, samples_per_site=50, num_features=5, seed=3)
    assert len(a.sites) == 7 and a.input_shape == (5,)
    assert a.sites[0].x_train.shape == (50, 5) and a.sites[0].num_test == 12  # 20 % of 62
    for x, y in zip(a.sites, b.sites, strict=True):
        np.testing.assert_array_equal(x.x_train, y.x_train)
        np.testing.assert_array_equal(x.y_test, y.y_test)
    assert not np.array_equal(a.sites[0].x_train, c.sites[0].x_train)


def test_labels_come_from_a_learnable_teacher():
    ds = make_synthetic(num_sites=5, samples_per_site=400, num_features=8, seed=0)
    train, test = ds.pooled(), ds.pooled()
    # Even a least-squares linear fit to the 2-layer teacher beats chance by a wide margin.
    design = np.c_[train.x_train, np.ones(train.num_train)]
    w, *_ = np.linalg.lstsq(design, 2.0 * train.y_train - 1, rcond=None)
    predicted = (np.c_[test.x_test, np.ones(test.num_test)] @ w > 0).astype(np.int64)
    assert (predicted == test.y_test).mean() > 0.75


def test_label_skew_makes_sites_differ_in_class_balance():
    skewed = make_synthetic(num_sites=20, samples_per_site=100, label_skew=0.1, seed=0)
    iid = make_synthetic(num_sites=20, samples_per_site=100, seed=0)

    def balance(ds):
        return np.std([s.y_train.mean() for s in ds.sites])

    assert balance(skewed) > 2 * balance(iid)


def test_feature_shift_moves_site_means():
    shifted = make_synthetic(num_sites=10, samples_per_site=200, feature_shift=2.0, seed=0)
    means = np.stack([s.x_train.mean(axis=0) for s in shifted.sites])
    assert means.std(axis=0).mean() > 1.0


def test_thousand_sites_in_one_vectorised_pass():
    ds = make_synthetic(num_sites=1000, samples_per_site=200, num_features=32, num_classes=3)
    assert sum(s.num_train for s in ds.sites) == 200_000
    assert ds.task == "multiclass" and ds.sites[999].x_train.dtype == np.float32


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="label_skew"):
        make_synthetic(label_skew=0.0)
    with pytest.raises(ConfigError, match="test_fraction"):
        make_synthetic(test_fraction=1.0)
