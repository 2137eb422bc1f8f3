"""UCI Heart Disease prepared exactly as FLamby's Fed-Heart-Disease benchmark."""

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.heart import FEATURES, load_heart_disease


@pytest.fixture(scope="module")
def heart():
    return load_heart_disease()


def test_four_hospitals_in_flamby_order_with_flamby_counts(heart):
    counts = {s.name: (s.num_train, s.num_test) for s in heart.sites}
    assert counts == {
        "cleveland": (199, 104),
        "hungarian": (172, 89),
        "switzerland": (30, 16),
        "va": (85, 45),
    }
    assert heart.site_names == ["cleveland", "hungarian", "switzerland", "va"]
    assert sum(a + b for a, b in counts.values()) == 740


def test_thirteen_features_after_one_hot_with_first_level_dropped(heart):
    assert heart.input_shape == (13,)
    assert heart.feature_names == [
        "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
        "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2",
    ]  # fmt: skip
    assert heart.task == "binary" and heart.num_classes == 2
    assert heart.class_names == ["no disease", "disease"]


def test_each_site_is_standardised_with_its_own_train_statistics(heart):
    for site in heart.sites:
        assert site.x_train.dtype == np.float32 and site.y_train.dtype == np.int64
        np.testing.assert_allclose(site.x_train.mean(axis=0), 0.0, atol=1e-5)
        # FLamby uses torch.std (n - 1); constant columns become 0 instead of NaN.
        stds = site.x_train.std(axis=0, ddof=1)
        assert np.all((np.abs(stds - 1) < 1e-4) | (stds < 1e-6))


def test_no_missing_or_infinite_value_anywhere():
    for normalisation in ("site", "none"):
        for site in load_heart_disease(normalisation).sites:
            for array in (site.x_train, site.x_test):
                assert np.isfinite(array).all()


def test_switzerland_cholesterol_of_zero_becomes_a_zero_column(heart):
    swiss = heart.site("switzerland")
    chol = FEATURES.index("chol")
    assert np.all(swiss.x_train[:, chol] == 0)
    assert np.all(swiss.x_test[:, chol] == 0)


def test_label_is_any_disease(heart):
    for site in heart.sites:
        assert set(np.unique(site.y_train)) <= {0, 1}
    assert set(np.unique(heart.pooled().y_train)) == {0, 1}
    # Switzerland's training rows are (almost) all diseased: the hardest site to be fair to.
    assert heart.site("switzerland").y_train.mean() > 0.9


def test_raw_values_without_normalisation():
    raw = load_heart_disease(normalisation="none").site("cleveland")
    age = raw.x_train[:, FEATURES.index("age")]
    assert age.min() > 25 and age.max() < 80
    one_hot = raw.x_train[:, FEATURES.index("cp_2") :]
    assert set(np.unique(one_hot)) == {0.0, 1.0}
    assert np.all(one_hot[:, :3].sum(axis=1) <= 1)  # at most one chest-pain level per row


def test_unknown_normalisation_is_a_config_error():
    with pytest.raises(ConfigError, match="'site' or 'none'"):
        load_heart_disease(normalisation="global")  # type: ignore[arg-type]


def test_attribution_names_the_principal_investigators_and_license(heart):
    for name in ("Andras Janosi", "William Steinbrunn", "Matthias Pfisterer", "Robert Detrano"):
        assert name in heart.source
    assert heart.extra["license"] == "CC BY 4.0"


def test_switzerland_training_rows_are_one_class_a_warning_as_for_user_tables(heart):
    # The same check and words as a hospital's own table (tests/data/test_table_checks.py).
    (warning,) = heart.extra["warnings"]
    assert warning.startswith("site 'switzerland': all 30 training rows are one class ('disease')")
    assert "local-only baseline learns to predict that class" in warning
