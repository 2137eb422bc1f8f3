import numpy as np
import pytest

from fedcare.data.heart import FEATURES, load_heart_disease


@pytest.fixture(scope="module")
def heart():
    return load_heart_disease()


def test_flamby_split_counts_per_hospital(heart):
    counts = {s.name: (s.num_train, s.num_test) for s in heart.sites}
    assert counts == {
        "cleveland": (199, 104),
        "hungarian": (172, 89),
        "switzerland": (30, 16),
        "va": (85, 45),
    }
    assert sum(a + b for a, b in counts.values()) == 740


def test_thirteen_features_after_one_hot_with_first_level_dropped(heart):
    assert heart.input_shape == (13,)
    assert heart.feature_names == FEATURES
    assert FEATURES[-5:] == ["cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"]


def test_each_site_is_standardised_with_its_own_train_statistics(heart):
    for site in heart.sites:
        assert np.isfinite(site.x_train).all()
        assert np.isfinite(site.x_test).all()
        np.testing.assert_allclose(site.x_train.mean(axis=0), 0.0, atol=1e-5)
        stds = site.x_train.std(axis=0)
        # Unit variance, except constant columns (Switzerland's chol = 0) which become 0.
        assert np.all((np.abs(stds - 1) < 1e-4) | (stds < 1e-6))
    swiss = heart.site("switzerland")
    chol = FEATURES.index("chol")
    assert np.all(swiss.x_train[:, chol] == 0)


def test_label_is_any_disease(heart):
    for site in heart.sites:
        assert set(np.unique(site.y_train)) <= {0, 1}
    assert heart.site("switzerland").y_train.mean() > 0.9


def test_raw_values_without_normalisation():
    raw = load_heart_disease(normalisation="none")
    age = raw.site("cleveland").x_train[:, 0]
    assert age.min() > 25 and age.max() < 80


def test_attribution_names_the_principal_investigators(heart):
    for name in ("Janosi", "Steinbrunn", "Pfisterer", "Detrano"):
        assert name in heart.source
