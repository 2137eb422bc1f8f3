import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.he import (
    CkksAccumulator,
    CkksParams,
    EncryptedVector,
    add_encrypted,
    decrypt_vector,
    encrypt_vector,
    generate_keys,
    load_public_context,
    load_secret_context,
    public_context_bytes,
    secret_context_bytes,
)


def updates(sites: int, length: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, length).astype(np.float32) for _ in range(sites)]


def plain_sum(vectors: list[np.ndarray]) -> np.ndarray:
    return np.sum(np.stack(vectors).astype(np.float64), axis=0)


@settings(max_examples=10, deadline=None)
@given(
    sites=st.integers(1, 8),
    length=st.integers(1, 9000),
    magnitude=st.sampled_from([1e-3, 1.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_decrypted_sum_equals_the_plain_sum(
    keys, coordinator_context, sites, length, magnitude, seed
):
    vectors = [v * np.float32(magnitude) for v in updates(sites, length, seed)]
    encrypted = [encrypt_vector(keys, v) for v in vectors]
    total = decrypt_vector(keys, add_encrypted(coordinator_context, encrypted))
    assert total.dtype == np.float32 and total.shape == (length,)
    # Rounding to 2**-20 plus float32 output; the CKKS noise itself is about 1e-8.
    tolerance = 2.0**-20 + 4 * np.finfo(np.float32).eps * sites * magnitude
    assert np.max(np.abs(total - plain_sum(vectors))) <= tolerance


def test_ten_updates_of_magnitude_one_sum_within_1e_minus_3(keys, coordinator_context):
    vectors = updates(10, 3 * keys.params.slots + 17, seed=1)
    encrypted = [EncryptedVector.from_bytes(encrypt_vector(keys, v).to_bytes()) for v in vectors]
    total = decrypt_vector(keys, add_encrypted(coordinator_context, encrypted))
    error = np.max(np.abs(total - plain_sum(vectors)))
    assert error < 1e-5  # the brief asks for 1e-3; we measure about 5e-7 (the rounding grid)


def test_the_rounding_grid_sits_well_above_the_raw_ckks_noise(keys, coordinator_context):
    vectors = updates(10, 2000, seed=2)
    total = add_encrypted(coordinator_context, [encrypt_vector(keys, v) for v in vectors])
    raw = np.asarray(ts.ckks_vector_from(keys.context, total.chunks[0]).decrypt())
    noise = np.max(np.abs(raw - plain_sum(vectors)))
    assert noise < 2.0**-keys.params.round_bits / 16  # about 1e-8 against a 1e-6 grid


def test_a_vector_is_packed_into_as_few_ciphertexts_as_the_slots_allow(keys):
    slots = keys.params.slots
    encrypted = encrypt_vector(keys, np.zeros(4 * slots + 1, dtype=np.float32))
    assert len(encrypted.chunks) == 5
    full = encrypt_vector(keys, np.ones(4 * slots, dtype=np.float32))
    ratio = full.nbytes / (4 * slots * 4)
    assert ratio <= 21  # one 60-bit data prime: about 8x the float32 bytes
    assert ratio < 8.2


def test_the_coordinator_context_has_no_secret_key_and_cannot_decrypt(keys, coordinator_context):
    assert not coordinator_context.context.is_private()
    assert keys.key_id == coordinator_context.key_id
    encrypted = add_encrypted(coordinator_context, [encrypt_vector(keys, np.ones(3))])
    chunk = ts.ckks_vector_from(coordinator_context.context, encrypted.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        chunk.decrypt()
    with pytest.raises(ValueError, match="doesn't support encryption"):
        ts.ckks_vector(coordinator_context.context, [1.0])
    # Parameters and key id only: a few hundred bytes, no key material at all.
    assert len(public_context_bytes(keys)) < 1000


def test_a_coordinator_context_with_a_secret_key_is_refused(keys):
    secret = secret_context_bytes(keys)
    with pytest.raises(ConfigError, match="holds a secret key"):
        load_public_context(secret)
    relabelled = b"FCPC" + secret[4:]  # a secret key set inside a public frame
    with pytest.raises(ConfigError, match="holds a secret key"):
        load_public_context(relabelled)
    with pytest.raises(ConfigError, match="not a fedcare CKKS context"):
        load_public_context(b"definitely not a context")
    with pytest.raises(ConfigError, match="bytes are not a TenSEAL context"):
        load_public_context(public_context_bytes(keys)[:40])


def test_other_key_holders_load_the_secret_context_and_decrypt(keys, coordinator_context):
    other_site = load_secret_context(secret_context_bytes(keys), keys.params, n_threads=1)
    assert other_site.key_id == keys.key_id
    total = add_encrypted(coordinator_context, [encrypt_vector(keys, np.full(5, 0.25))])
    np.testing.assert_allclose(decrypt_vector(other_site, total), 0.25, atol=1e-6)
    with pytest.raises(ConfigError, match="hold no secret key"):
        load_secret_context(public_context_bytes(keys), keys.params)
    with pytest.raises(ConfigError, match="does not match the configured parameters"):
        load_secret_context(secret_context_bytes(keys), CkksParams(scale_bits=30))
    secret = secret_context_bytes(keys)
    mislabelled = secret[:5] + bytes(16) + secret[21:]
    with pytest.raises(ConfigError, match="key id does not match the key"):
        load_secret_context(mislabelled, keys.params)


def test_a_vector_under_another_key_set_is_refused(keys, coordinator_context):
    stranger = generate_keys(keys.params, n_threads=1)
    foreign = encrypt_vector(stranger, np.ones(4))
    with pytest.raises(UpdateRejectedError, match="another key set"):
        add_encrypted(coordinator_context, [encrypt_vector(keys, np.ones(4)), foreign])
    with pytest.raises(ProtocolError, match="another key set"):
        decrypt_vector(keys, foreign)


def test_mismatched_lengths_are_refused(keys, coordinator_context):
    with pytest.raises(UpdateRejectedError, match="vector 1: encrypted vector has length 5"):
        add_encrypted(
            coordinator_context,
            [encrypt_vector(keys, np.ones(4)), encrypt_vector(keys, np.ones(5))],
        )


def test_corrupt_or_misplaced_ciphertexts_are_refused_naming_which(keys, coordinator_context):
    slots = keys.params.slots
    good = encrypt_vector(keys, np.ones(slots + 3))
    garbled = EncryptedVector(
        good.key_id, good.length, (good.chunks[0], good.chunks[1][:50]), good.summands
    )
    with pytest.raises(UpdateRejectedError, match="ciphertext 1 of 2 is corrupt"):
        add_encrypted(coordinator_context, [garbled])
    swapped = EncryptedVector(good.key_id, good.length, good.chunks[::-1], good.summands)
    with pytest.raises(UpdateRejectedError, match="ciphertext 0 holds 3 values, expected"):
        add_encrypted(coordinator_context, [swapped])
    short = EncryptedVector(good.key_id, good.length, good.chunks[:1], good.summands)
    with pytest.raises(UpdateRejectedError, match="need 2 ciphertexts"):
        decrypt_vector(keys, short)


def test_a_ciphertext_at_another_scale_cannot_join_the_sum(keys, coordinator_context):
    odd = ts.ckks_vector(keys.context, [1.0, 2.0], scale=2.0**30).serialize()
    vector = EncryptedVector(keys.key_id, 2, (odd,))
    with pytest.raises(UpdateRejectedError, match="ciphertext 0 cannot be added"):
        add_encrypted(coordinator_context, [encrypt_vector(keys, np.ones(2)), vector])


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([5000.0]), "exceeds 4096"),
        (np.zeros((2, 2)), "flat float vector"),
        (np.zeros(0), "non-empty"),
        (np.arange(3), "flat float vector"),
    ],
)
def test_inputs_that_would_break_the_sum_are_refused(keys, vector, message):
    with pytest.raises(UpdateRejectedError, match=message):
        encrypt_vector(keys, vector, source="site 'zurich'")


def test_more_summands_than_the_headroom_allows_are_refused(keys, coordinator_context):
    one = encrypt_vector(keys, np.ones(2))
    acc = CkksAccumulator(coordinator_context, max_summands=2)
    acc.add(one)
    acc.add(one)
    with pytest.raises(UpdateRejectedError, match="more than max_summands = 2"):
        acc.add(one)
    inflated = EncryptedVector(one.key_id, one.length, one.chunks, summands=65)
    with pytest.raises(ProtocolError, match="may have wrapped"):
        decrypt_vector(keys, inflated)


def test_an_empty_sum_is_a_protocol_error(coordinator_context):
    with pytest.raises(ProtocolError, match="no encrypted vector"):
        add_encrypted(coordinator_context, [])
