import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.algorithms.aggregate import StreamingMean, aggregation_weight, weighted_mean


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_fedavg_weights_sites_by_their_number_of_samples():
    # Two hospitals: 100 and 300 patients. n_k / n = 0.25 and 0.75.
    result = weighted_mean([f32(1.0, 2.0), f32(5.0, -2.0)], [100, 300])
    np.testing.assert_allclose(result, [0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * -2])


def test_uniform_weighting_ignores_site_size():
    w = [aggregation_weight(n, "uniform") for n in (10, 1000)]
    np.testing.assert_allclose(weighted_mean([f32(0.0), f32(4.0)], w), [2.0])


def test_streaming_mean_equals_batch_mean_and_averages_extras_uniformly():
    acc = StreamingMean(2)
    acc.add(f32(1.0, 1.0), 1.0, {"c": f32(2.0, 0.0)})
    acc.add(f32(4.0, 7.0), 2.0, {"c": f32(0.0, 4.0)})
    result = acc.result()
    np.testing.assert_allclose(result.delta, [3.0, 5.0])
    np.testing.assert_allclose(result.extras["c"], [1.0, 2.0])
    assert result.count == 2 and result.total_weight == 3.0


def test_empty_round_is_an_error_not_a_zero_update():
    with pytest.raises(ValueError, match="no update"):
        StreamingMean(3).result()


def test_negative_or_nan_weights_are_refused():
    with pytest.raises(ValueError):
        StreamingMean(1).add(f32(1.0), -1.0)
    with pytest.raises(ValueError):
        weighted_mean([f32(1.0)], [float("nan")])


@settings(max_examples=50)
@given(
    arrays(np.float32, (6, 5), elements=st.floats(-100, 100, width=32)),
    st.lists(st.integers(1, 1000), min_size=6, max_size=6),
    st.integers(1, 6),
)
def test_block_and_single_adds_agree_for_any_chunking(deltas, weights, chunk):
    single = StreamingMean(5)
    for d, w in zip(deltas, weights, strict=True):
        single.add(d, float(w))
    blocked = StreamingMean(5)
    for i in range(0, 6, chunk):
        blocked.add_block(
            deltas[i : i + chunk], np.asarray(weights[i : i + chunk], dtype=np.float64)
        )
    np.testing.assert_allclose(blocked.result().delta, single.result().delta, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(
        single.result().delta, weighted_mean(list(deltas), weights), rtol=1e-6, atol=1e-5
    )
