import numpy as np

from fedcare.data.synthetic import make_synthetic


def test_synthetic_is_deterministic_and_shaped_as_asked():
    a = make_synthetic(num_sites=7, samples_per_site=50, num_features=5, seed=2)
    b = make_synthetic(num_sites=7, samples_per_site=50, num_features=5, seed=2)
    assert len(a.sites) == 7
    assert a.sites[0].x_train.shape == (50, 5)
    assert np.array_equal(a.sites[3].x_test, b.sites[3].x_test)


def test_label_skew_makes_sites_differ_in_class_balance():
    skewed = make_synthetic(num_sites=20, samples_per_site=100, label_skew=0.1, seed=0)
    iid = make_synthetic(num_sites=20, samples_per_site=100, seed=0)
    balance = lambda ds: np.std([s.y_train.mean() for s in ds.sites])  # noqa: E731
    assert balance(skewed) > 2 * balance(iid)


def test_thousand_sites_are_cheap():
    ds = make_synthetic(num_sites=1000, samples_per_site=200, num_features=32)
    assert sum(s.num_train for s in ds.sites) == 200_000
