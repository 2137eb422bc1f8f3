import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.he import paillier

# 1024-bit keys keep these tests fast; the default (2048) is checked once below.


@pytest.fixture(scope="module")
def keypair():
    return paillier.generate_keypair(1024)


values = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=8, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda n: st.lists(st.lists(values, min_size=n, max_size=n), min_size=1, max_size=4)
    )
)
def test_sum_is_exact_in_fixed_point(keypair, rows):
    public, private = keypair
    encrypted = [paillier.encrypt_vector(public, row, frac_bits=20) for row in rows]
    total = paillier.decrypt_vector(private, paillier.add_vectors(public, encrypted))
    # Exactly the sum of the rounded inputs ...
    rounded = np.round(np.ldexp(np.array(rows, dtype=np.float64), 20)).sum(axis=0)
    np.testing.assert_array_equal(total, np.ldexp(rounded, -20))
    # ... so within half a fixed-point step per summand of the plain sum.
    plain = np.array(rows, dtype=np.float64).sum(axis=0)
    assert np.all(np.abs(total - plain) <= len(rows) * 2.0**-21)


def test_negative_values_and_zero_survive_the_wrap_modulo_n(keypair):
    public, private = keypair
    x = np.array([-1.5, 0.0, 2.0**-32, -(2.0**40)])
    back = paillier.decrypt_vector(private, paillier.encrypt_vector(public, x))
    np.testing.assert_array_equal(back, x)


def test_bytes_and_json_round_trips(keypair):
    public, private = keypair
    vec = paillier.encrypt_vector(public, [0.5, -0.25, 3.0])
    data = vec.to_bytes(public)
    assert len(data) == paillier.PaillierVector.from_bytes(data).to_bytes(public).__len__()
    assert len(data) > 3 * 256  # one 2048-bit (n**2) ciphertext per value
    from_bytes = paillier.PaillierVector.from_bytes(data)
    from_json = paillier.PaillierVector.from_json(json.loads(json.dumps(vec.to_json())))
    for back in (from_bytes, from_json):
        np.testing.assert_array_equal(paillier.decrypt_vector(private, back), [0.5, -0.25, 3.0])
    public_back = paillier.public_key_from_json(
        json.loads(json.dumps(paillier.public_key_to_json(public)))
    )
    private_back = paillier.private_key_from_json(paillier.private_key_to_json(private))
    assert public_back == public
    np.testing.assert_array_equal(paillier.decrypt_vector(private_back, vec), [0.5, -0.25, 3.0])


def test_the_default_key_is_2048_bits():
    public, private = paillier.generate_keypair()
    assert public.n.bit_length() == 2048
    assert paillier.decrypt_vector(private, paillier.encrypt_vector(public, [1.25]))[0] == 1.25


def test_mismatched_or_corrupt_vectors_are_refused(keypair):
    public, private = keypair
    other_public, _ = paillier.generate_keypair(1024)
    a = paillier.encrypt_vector(public, [1.0, 2.0])
    with pytest.raises(UpdateRejectedError, match="vector 1: encrypted under another key"):
        paillier.add_vectors(public, [a, paillier.encrypt_vector(other_public, [1.0, 2.0])])
    with pytest.raises(UpdateRejectedError, match="vector 1: 3 values at frac_bits 32"):
        paillier.add_vectors(public, [a, paillier.encrypt_vector(public, [1.0, 2.0, 3.0])])
    out_of_range = paillier.PaillierVector(a.key_id, a.frac_bits, (0, a.ciphertexts[1]))
    with pytest.raises(UpdateRejectedError, match="ciphertext 0 is outside"):
        paillier.add_vectors(public, [out_of_range])
    garbage = paillier.PaillierVector(a.key_id, a.frac_bits, (a.ciphertexts[0], 12345))
    with pytest.raises(ProtocolError, match="value 1 decrypts outside"):
        paillier.decrypt_vector(private, garbage)
    data = a.to_bytes(public)
    with pytest.raises(UpdateRejectedError, match=r"needs .* bytes, found"):
        paillier.PaillierVector.from_bytes(data[:-1])
    with pytest.raises(UpdateRejectedError, match="ciphertexts \\(hex strings\\)"):
        paillier.PaillierVector.from_json({"key_id": "zz"})
    with pytest.raises(ProtocolError, match="no Paillier vector"):
        paillier.add_vectors(public, [])


def test_invalid_keys_and_inputs_are_refused(keypair):
    public, _ = keypair
    with pytest.raises(ConfigError, match="multiple of 256"):
        paillier.generate_keypair(1000)
    with pytest.raises(ConfigError, match="field 'n' must be a hex integer"):
        paillier.public_key_from_json({"n": "xyz"})
    with pytest.raises(ConfigError, match="odd modulus of at least 1024 bits"):
        paillier.public_key_from_json({"n": "ff"})
    with pytest.raises(ConfigError, match="not a valid pair"):
        paillier.private_key_from_json({"p": "7", "q": "7"})
    with pytest.raises(UpdateRejectedError, match="finite values"):
        paillier.encrypt_vector(public, [float("inf")])
