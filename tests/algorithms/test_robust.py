import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.algorithms.robust import ROBUST_RULES, build_robust_aggregator
from fedcare.core.errors import ConfigError

ONES = np.ones(5, dtype=np.float64)


def rows(*values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_hand_computed_values():
    u = rows([1, 10], [2, 20], [3, 30], [4, 40], [100, -100])
    assert build_robust_aggregator("median")(u, ONES).tolist() == [3, 20]
    # beta 0.2 of 5 drops one value at each end per coordinate.
    np.testing.assert_allclose(build_robust_aggregator("trimmed_mean", beta=0.2)(u, ONES), [3, 20])
    np.testing.assert_allclose(build_robust_aggregator("mean")(u, ONES), [22, 0], atol=1e-5)
    # Krum with f=1 picks the update closest to its K - f - 2 = 2 nearest neighbours.
    np.testing.assert_allclose(build_robust_aggregator("krum", f=1)(u, ONES), [2, 20])
    np.testing.assert_allclose(build_robust_aggregator("multi_krum", f=1, m=3)(u, ONES), [2, 20])
    bounded = build_robust_aggregator("norm_bound", max_norm=1.0)(
        rows([3, 4], [0, 0.5]), np.ones(2)
    )
    np.testing.assert_allclose(bounded, [0.3, 0.65], rtol=1e-6)


@settings(max_examples=40)
@given(
    st.sampled_from(["median", "trimmed_mean", "krum", "norm_bound"]),
    st.floats(1e2, 1e8),
    st.integers(0, 10_000),
)
def test_one_outlier_has_bounded_influence(rule_name, magnitude, seed):
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=(9, 4)).astype(np.float32)
    outlier = np.full((1, 4), magnitude, dtype=np.float32)
    params = {"trimmed_mean": {"beta": 0.2}, "krum": {"f": 1}, "norm_bound": {"max_norm": 3.0}}.get(
        rule_name, {}
    )
    rule = build_robust_aggregator(rule_name, **params)
    result = rule(np.vstack([honest, outlier]), np.ones(10))
    spread = np.abs(honest).max() + 3.0
    assert np.abs(result).max() <= spread
    plain = build_robust_aggregator("mean")(np.vstack([honest, outlier]), np.ones(10))
    assert np.abs(plain).max() > magnitude / 20


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="more than 2f"):
        build_robust_aggregator("krum", f=2)(rows([1], [2], [3], [4], [5], [6]), np.ones(6))
    with pytest.raises(ValueError, match="NaN"):
        build_robust_aggregator("median")(rows([1], [np.nan]), np.ones(2))
    with pytest.raises(ConfigError, match="known"):
        build_robust_aggregator("geomedian")
    with pytest.raises(ConfigError, match="beta"):
        build_robust_aggregator("trimmed_mean", beta=0.6)
    assert "median" in ROBUST_RULES
