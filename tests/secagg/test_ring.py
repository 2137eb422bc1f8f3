import numpy as np
import pytest

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
