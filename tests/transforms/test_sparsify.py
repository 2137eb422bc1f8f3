import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.transforms.sparsify import SparseVector, TopKCompressor, decode

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def test_keeps_the_largest_magnitudes():
    sent, residual = TopKCompressor(0.4).encode(np.array([0.1, -5, 2, 0.3, -0.2], np.float32))
    assert sent.indices.tolist() == [1, 2]
    np.testing.assert_array_equal(decode(sent), [0, -5, 2, 0, 0])
    np.testing.assert_array_equal(residual, np.array([0.1, 0, 0, 0.3, -0.2], np.float32))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, 50, elements=finite),
    arrays(np.float32, 50, elements=finite),
    st.floats(0.01, 1.0),
)
def test_error_feedback_carries_exactly_what_was_not_sent(update, old_residual, fraction):
    sent, new_residual = TopKCompressor(fraction).encode(update, old_residual)
    np.testing.assert_array_equal(decode(sent) + new_residual, update + old_residual)
    assert sent.indices.size == TopKCompressor(fraction).k_for(50)


def test_repeated_rounds_eventually_send_every_coordinate():
    compressor = TopKCompressor(0.1)
    update = np.linspace(1.0, 2.0, 20, dtype=np.float32)
    residual, delivered = None, np.zeros(20, np.float32)
    for _ in range(40):
        sent, residual = compressor.encode(update, residual)
        delivered += decode(sent)
    # Everything produced over 40 rounds was delivered, minus what is still carried.
    np.testing.assert_allclose(delivered + residual, 40 * update, rtol=1e-5)
    assert np.all(delivered > 0)


def test_one_percent_moves_at_least_25x_fewer_bytes_and_wire_round_trips():
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    sent, _ = TopKCompressor(0.01).encode(x)
    assert x.nbytes / sent.nbytes >= 25
    again = SparseVector.from_bytes(sent.to_bytes(), length=x.size)
    np.testing.assert_array_equal(decode(again), decode(sent))
    with pytest.raises(ValueError, match="fraction"):
        TopKCompressor(0.0)
    with pytest.raises(ValueError, match="residual has shape"):
        TopKCompressor(0.5).encode(x[:10], x[:5])
