import numpy as np
import pytest

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.he import CoordinatorState, EncryptedVector, HeCoordinator, HeSite, load_secret_context
from fedcare.he.ckks import secret_context_bytes

SIZES = {"cleveland": 199, "hungary": 172, "zurich": 30}


@pytest.fixture(scope="module")
def sites(keys):
    # One site made the keys; the others loaded them over a channel the coordinator never sees.
    shared = secret_context_bytes(keys)
    return {
        name: HeSite(load_secret_context(shared, keys.params, n_threads=1), name=name)
        for name in SIZES
    }


def test_weighted_round_decrypts_to_the_plain_weighted_sum_and_mean(sites):
    rng = np.random.default_rng(0)
    deltas = {name: rng.normal(0, 0.1, 5000).astype(np.float32) for name in SIZES}
    coordinator = HeCoordinator(sites["cleveland"].public_context(), expected_length=5000)
    for name, site in sites.items():
        coordinator.receive(site.encrypt_update(deltas[name], weight=SIZES[name]), sender=name)
    aggregate = coordinator.aggregate()
    assert coordinator.state is CoordinatorState.DONE

    expected = sum(SIZES[n] * deltas[n].astype(np.float64) for n in SIZES)
    for site in sites.values():
        opened = site.open_aggregate(aggregate)
        assert opened.summands == 3
        assert opened.total_weight == pytest.approx(401, abs=1e-5)
        np.testing.assert_allclose(opened.weighted_sum, expected, atol=1e-4)
        np.testing.assert_allclose(opened.mean(), expected / 401, atol=1e-6)
    np.testing.assert_array_equal(
        sites["zurich"].decrypt_aggregate(aggregate),
        sites["zurich"].open_aggregate(aggregate).weighted_sum,
    )


def test_bytes_on_the_wire_are_counted_on_both_sides(sites):
    site = HeSite(sites["zurich"].keys, name="zurich")
    context = site.public_context()
    payload = site.encrypt_update(np.ones(10, dtype=np.float32), weight=0.5)
    coordinator = HeCoordinator(context)
    aggregate = coordinator.add([payload])
    np.testing.assert_allclose(site.decrypt_aggregate(aggregate), 0.5, atol=1e-6)
    assert site.bytes_sent == len(context) + len(payload)
    assert coordinator.bytes_received == len(context) + len(payload)
    assert coordinator.bytes_sent == len(aggregate) == site.bytes_received


def test_the_coordinator_only_ever_holds_the_public_context(sites):
    site = sites["hungary"]
    with pytest.raises(ConfigError, match="holds a secret key"):
        HeCoordinator(secret_context_bytes(site.keys))
    with pytest.raises(ConfigError, match="must never hold the sites' keys"):
        HeCoordinator(site.keys)
    coordinator = HeCoordinator(site.public_context())
    assert not coordinator.context.context.is_private()


def test_protocol_violations_are_refused(sites):
    site = sites["cleveland"]
    payload = site.encrypt_update(np.ones(8, dtype=np.float32))
    coordinator = HeCoordinator(site.public_context(), expected_length=8)
    coordinator.receive(payload, sender="cleveland")
    with pytest.raises(UpdateRejectedError, match="'cleveland' already sent"):
        coordinator.receive(payload, sender="cleveland")
    with pytest.raises(UpdateRejectedError, match="site 'zurich': 9 parameters, expected 8"):
        coordinator.receive(site.encrypt_update(np.ones(9, dtype=np.float32)), sender="zurich")
    forged = EncryptedVector.from_bytes(payload)
    forged = EncryptedVector(forged.key_id, forged.length, forged.chunks, summands=5)
    with pytest.raises(UpdateRejectedError, match="claims to sum 5 vectors"):
        coordinator.receive(forged.to_bytes(), sender="basel")
    aggregate = coordinator.aggregate()
    with pytest.raises(ProtocolError, match="after the aggregate was produced"):
        coordinator.receive(payload, sender="va")
    with pytest.raises(ProtocolError, match="already produced"):
        coordinator.aggregate()
    corrupt = bytearray(aggregate)
    corrupt[100] ^= 0xFF
    with pytest.raises(
        UpdateRejectedError, match=r"aggregate received by site 'cleveland'.*checksum"
    ):
        site.decrypt_aggregate(bytes(corrupt))


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_invalid_weights_are_refused(sites, weight):
    with pytest.raises(UpdateRejectedError, match="site 'hungary': aggregation weight"):
        sites["hungary"].encrypt_update(np.ones(3, dtype=np.float32), weight=weight)
