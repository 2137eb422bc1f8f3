import numpy as np
import pytest

from fedcare.core.metrics import EvalStats, exact_auc


def test_accuracy_and_balanced_accuracy_from_counts():
    probs = np.array([0.9, 0.8, 0.2, 0.4, 0.7])
    labels = np.array([1, 1, 0, 1, 0])
    stats = EvalStats.from_predictions(probs, labels, np.zeros(5), num_classes=2)
    assert stats.accuracy == pytest.approx(3 / 5)
    # recall class 1: 2/3, class 0: 1/2
    assert stats.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_pooled_auc_is_the_auc_of_all_rows_not_the_mean_of_site_aucs():
    rng = np.random.default_rng(0)
    # Site A scores everything high, site B low: each site ranks perfectly, pooled does not.
    a_labels = rng.integers(0, 2, 200)
    a_scores = 0.6 + 0.3 * a_labels + rng.uniform(0, 0.05, 200)
    b_labels = rng.integers(0, 2, 200)
    b_scores = 0.05 + 0.3 * b_labels + rng.uniform(0, 0.05, 200)
    a = EvalStats.from_predictions(a_scores, a_labels, np.zeros(200), 2)
    b = EvalStats.from_predictions(b_scores, b_labels, np.zeros(200), 2)
    pooled = a + b
    truth = exact_auc(np.concatenate([a_scores, b_scores]), np.concatenate([a_labels, b_labels]))
    assert a.auc == pytest.approx(1.0) and b.auc == pytest.approx(1.0)
    assert pooled.auc == pytest.approx(truth, abs=2e-3)
    assert pooled.auc < 0.9


def test_histogram_auc_matches_exact_auc_on_random_scores():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    scores = 1 / (1 + np.exp(-(labels + rng.normal(size=1000))))
    stats = EvalStats.from_predictions(scores, labels, np.zeros(1000), 2)
    assert stats.auc == pytest.approx(exact_auc(scores, labels), abs=1e-3)


def test_multiclass_counts_and_macro_auc():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1, 2, 1])
    stats = EvalStats.from_predictions(probs, labels, np.ones(4), num_classes=3)
    assert stats.accuracy == pytest.approx(0.75)
    assert stats.loss == pytest.approx(1.0)
    assert 0.0 <= stats.auc <= 1.0


def test_auc_is_nan_when_only_one_class_present():
    stats = EvalStats.from_predictions(np.array([0.2, 0.9]), np.array([1, 1]), np.zeros(2), 2)
    assert np.isnan(stats.auc)
