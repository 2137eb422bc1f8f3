import numpy as np
import pytest

from fedcare.core.errors import ProtocolError
from fedcare.secagg.crypto import (
    KeyPair,
    associated_data,
    derive_key,
    expand_mask,
    open_sealed,
    seal,
)
from tests.secagg.harness import seeded_rng

SESSION = b"study-7/round-03"


def shared_key(a: KeyPair, b: KeyPair, sender: int, recipient: int, session: bytes = SESSION):
    return derive_key(a.agree(b.public), session, b"share", sender, recipient)


@pytest.fixture
def alice_bob():
    rng = seeded_rng(0)
    return KeyPair.generate(rng), KeyPair.generate(rng)


def test_both_ends_derive_the_same_key_and_directions_differ(alice_bob):
    alice, bob = alice_bob
    assert shared_key(alice, bob, 1, 2) == shared_key(bob, alice, 1, 2)
    assert shared_key(alice, bob, 1, 2) != shared_key(alice, bob, 2, 1)


def test_sealed_share_opens_only_unchanged_and_in_its_context(alice_bob):
    alice, bob = alice_bob
    key = shared_key(alice, bob, 1, 2)
    ad = associated_data(SESSION, 1, 1, 2)
    nonce, ct = seal(key, b"share of b_1 for client 2", ad, seeded_rng(1))
    assert open_sealed(key, nonce, ct, ad) == b"share of b_1 for client 2"

    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(ProtocolError, match="failed authentication"):
        open_sealed(key, nonce, tampered, ad)
    # Redirected to client 3, or claimed to come from client 4: the associated data differs.
    for wrong_ad in (associated_data(SESSION, 1, 1, 3), associated_data(SESSION, 1, 4, 2)):
        with pytest.raises(ProtocolError, match="failed authentication"):
            open_sealed(key, nonce, ct, wrong_ad)


def test_a_ciphertext_replayed_into_the_next_round_fails(alice_bob):
    alice, bob = alice_bob
    old = b"study-7/round-02"
    nonce, ct = seal(
        shared_key(alice, bob, 1, 2, old), b"x", associated_data(old, 1, 1, 2), seeded_rng(2)
    )
    with pytest.raises(ProtocolError, match="failed authentication"):
        open_sealed(shared_key(alice, bob, 1, 2), nonce, ct, associated_data(SESSION, 1, 1, 2))


def test_key_agreement_refuses_a_low_order_point(alice_bob):
    alice, _ = alice_bob
    with pytest.raises(ProtocolError, match="key agreement failed"):
        alice.agree(bytes(32))


def test_prg_is_deterministic_per_seed_and_looks_uniform():
    seed = bytes(range(32))
    a = expand_mask(seed, 100_000)
    assert a.dtype == np.uint32 and a.shape == (100_000,)
    assert np.array_equal(a, expand_mask(seed, 100_000))
    assert np.array_equal(a[:10], expand_mask(seed, 10))  # a prefix of the same stream
    other = expand_mask(bytes(32), 100_000)
    assert np.mean(a == other) < 1e-3
    bits = np.unpackbits(a.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005
