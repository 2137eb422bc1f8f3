import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, UpdateRejectedError
from fedcare.secagg import FixedPointRing


def test_round_trip_is_within_half_a_step_and_clips():
    ring = FixedPointRing(clip=1.0, max_clients=50)
    x = np.array([0.0, 0.25, -0.7, 1e-9, 3.0, -3.0], dtype=np.float32)
    back = ring.decode_sum(ring.encode(x), 1)
    expected = np.clip(x, -1, 1)
    assert np.all(np.abs(back - expected) <= ring.resolution / 2 + 1e-7)


def test_sum_of_max_clients_at_the_clip_does_not_overflow():
    ring = FixedPointRing(clip=2.0, max_clients=200)
    for value in (2.0, -2.0):
        encoded = ring.encode(np.full(4, value, dtype=np.float32))
        total = np.zeros(4, dtype=np.uint32)
        for _ in range(200):
            total += encoded
        assert np.allclose(ring.decode_sum(total, 200), 200 * value)


def test_a_scale_that_could_overflow_is_refused():
    with pytest.raises(ConfigError, match="would overflow"):
        FixedPointRing(clip=1.0, max_clients=50, scale=2.0**26)
    FixedPointRing(clip=1.0, max_clients=50, scale=2.0**25)


def test_decoding_more_clients_than_the_ring_is_sized_for_is_refused():
    ring = FixedPointRing(clip=1.0, max_clients=3)
    with pytest.raises(ConfigError, match="sized for 3"):
        ring.decode_sum(np.zeros(2, dtype=np.uint32), 4)


def test_non_finite_inputs_are_rejected():
    ring = FixedPointRing(clip=1.0, max_clients=3)
    with pytest.raises(UpdateRejectedError, match="NaN"):
        ring.encode(np.array([0.0, np.nan], dtype=np.float32))


def float64_reference(ring: FixedPointRing, x: np.ndarray) -> np.ndarray:
    """The definition: clip in float64, scale, round half to even, two's complement."""
    clipped = np.clip(x.astype(np.float64), -ring.clip, ring.clip)
    return np.rint(clipped * ring.factor).astype(np.int32).view(np.uint32)


rings = st.builds(
    FixedPointRing,
    clip=st.sampled_from([1.0, 0.1, 1.5, 2.0, 0.37, 1e-3, 1e4]),
    max_clients=st.sampled_from([1, 2, 3, 50, 200]),
    scale=st.sampled_from([None, None, 1000.0, 3.5]),
)


@settings(max_examples=60, deadline=None)
@given(ring=rings, dtype=st.sampled_from([np.float16, np.float32, np.float64]), data=st.data())
def test_fast_encoding_gives_exactly_the_float64_definition(ring, dtype, data):
    limit = float(np.finfo(dtype).max)
    values = data.draw(
        st.lists(st.floats(-limit, limit, width=np.finfo(dtype).bits), min_size=1, max_size=40)
    )
    # Entries right at the clip, one step beyond it, and at half-steps of the grid.
    edges = [ring.clip, -ring.clip, 0.5 / ring.factor, -1.5 / ring.factor, 2.5 / ring.factor]
    x = np.array([*values, *edges], dtype=np.float64).astype(dtype)
    x = x[np.isfinite(x)]
    assert np.array_equal(ring.encode(x), float64_reference(ring, x))


@settings(max_examples=30, deadline=None)
@given(ring=rings, words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_fast_decoding_gives_exactly_the_float64_definition(ring, words):
    total = np.array([*words, 0, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint32)
    expected = (total.view(np.int32).astype(np.float64) / ring.factor).astype(np.float32)
    decoded = ring.decode_sum(total, 1)
    assert decoded.dtype == np.float32 and np.array_equal(decoded, expected)
