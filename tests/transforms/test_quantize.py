import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.transforms.quantize import QuantizedVector, decode, encode

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 3000), elements=finite),
    st.sampled_from([4, 8]),
    st.sampled_from([7, 64, 1024]),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_is_within_one_step_of_its_chunk(x, bits, chunk, seed):
    q = encode(x, np.random.default_rng(seed), bits=bits, chunk_size=chunk)
    back = decode(q)
    step = np.repeat(q.scales, chunk)[: x.size].astype(np.float64)
    ulp = np.spacing(np.abs(back)).astype(np.float64)
    assert np.all(np.abs(back.astype(np.float64) - x) <= step + ulp)
    # The wire format carries exactly nbytes and decodes to the same values.
    wire = q.to_bytes()
    assert len(wire) == q.nbytes
    again = QuantizedVector.from_bytes(wire, length=x.size, bits=bits, chunk_size=chunk)
    np.testing.assert_array_equal(decode(again), back)


def test_eight_bits_moves_about_a_quarter_of_the_bytes_and_four_bits_an_eighth():
    x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    rng = np.random.default_rng(1)
    assert x.nbytes / encode(x, rng, bits=8).nbytes >= 3.9
    assert x.nbytes / encode(x, rng, bits=4).nbytes >= 7.5


def test_stochastic_rounding_is_unbiased():
    x = np.array([0.0, 0.3, 0.71, 1.0], dtype=np.float32)  # one chunk, step 1/15 at 4 bits
    rng = np.random.default_rng(2)
    mean = np.mean([decode(encode(x, rng, bits=4)) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, x, atol=4e-3)


def test_constant_chunks_are_exact_and_bad_input_is_refused():
    x = np.full(10, 2.5, dtype=np.float32)
    np.testing.assert_array_equal(decode(encode(x, np.random.default_rng(0))), x)
    with pytest.raises(ValueError, match="NaN or inf"):
        encode(np.array([1.0, np.nan], dtype=np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="bits"):
        encode(x, np.random.default_rng(0), bits=3)
    with pytest.raises(ValueError, match="bytes"):
        QuantizedVector.from_bytes(encode(x, np.random.default_rng(0)).to_bytes()[:-1], length=10)
