import numpy as np
import pytest

from fedcare.algorithms.mocha import regulariser, site_objective, task_covariance, task_precision
from fedcare.core.errors import ConfigError


def test_task_covariance_has_unit_trace_and_sees_related_sites():
    models = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    sigma = task_covariance(models)
    assert np.trace(sigma) == pytest.approx(1.0)
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-12)
    # Sites 0 and 1 solve similar tasks: they covary more than sites 0 and 2.
    assert sigma[0, 1] > sigma[0, 2]


def test_site_gradient_of_the_regulariser_matches_finite_differences():
    rng = np.random.default_rng(0)
    models = rng.normal(size=(3, 4))
    precision = task_precision(task_covariance(models))
    lam1, lam2, site = 0.3, 0.05, 1
    objective = site_objective(precision, models, site, lam1, lam2)
    w = models[site]
    analytic = objective.prox_mu * (w - objective.anchor) + objective.correction
    numeric = np.zeros(4)
    for j in range(4):
        step = np.zeros_like(models)
        step[site, j] = 1e-6
        numeric[j] = (
            regulariser(models + step, precision, lam1, lam2)
            - regulariser(models - step, precision, lam1, lam2)
        ) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)


def test_identical_sites_keep_a_bounded_precision():
    precision = task_precision(task_covariance(np.ones((4, 3))))
    assert np.abs(precision).max() <= 10.0 + 1e-9


def test_negative_strengths_are_refused():
    with pytest.raises(ConfigError, match="mocha"):
        site_objective(np.eye(2), np.zeros((2, 2)), 0, -1.0, 0.0)
