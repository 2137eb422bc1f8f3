import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.secagg import shamir
from tests.secagg.harness import seeded_rng

SECRET = bytes(range(32))


def test_any_threshold_shares_recover_the_secret():
    shares = shamir.split(SECRET, 3, [1, 2, 3, 4, 5], seeded_rng(0))
    for subset in itertools.combinations(shares.values(), 3):
        assert shamir.combine(list(subset), 3) == SECRET
    assert shamir.combine(list(shares.values()), 3) == SECRET


def test_fewer_shares_than_the_threshold_fail_loudly():
    shares = list(shamir.split(SECRET, 3, [1, 2, 3, 4, 5], seeded_rng(1)).values())
    with pytest.raises(ProtocolError, match="2 distinct shares, threshold is 3"):
        shamir.combine(shares[:2], 3)


def test_understating_the_threshold_is_caught_by_the_integrity_tag():
    # Two points of a degree-2 polynomial interpolate to a wrong constant; the tag notices.
    shares = list(shamir.split(SECRET, 3, [1, 2, 3, 4, 5], seeded_rng(2)).values())
    with pytest.raises(ProtocolError, match="integrity check"):
        shamir.combine(shares[:2], 2)


def test_a_corrupted_share_is_caught_by_the_integrity_tag():
    shares = list(shamir.split(SECRET, 3, [1, 2, 3], seeded_rng(3)).values())
    shares[1] = shamir.Share(shares[1].x, shares[1].y ^ 1)
    with pytest.raises(ProtocolError, match="integrity check"):
        shamir.combine(shares, 3)


def test_two_different_shares_for_one_point_are_rejected():
    shares = list(shamir.split(SECRET, 2, [1, 2], seeded_rng(4)).values())
    with pytest.raises(ProtocolError, match="claim point 1"):
        shamir.combine([*shares, shamir.Share(1, 5)], 2)


def test_split_rejects_a_threshold_above_the_number_of_holders():
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(SECRET, 4, [1, 2, 3], seeded_rng(5))


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.integers(1, 12),
    data=st.data(),
)
def test_round_trip_for_random_secrets_thresholds_and_subsets(secret, holders, data):
    threshold = data.draw(st.integers(1, holders))
    points = data.draw(
        st.lists(st.integers(1, 2**32), min_size=holders, max_size=holders, unique=True)
    )
    shares = list(shamir.split(secret, threshold, points, seeded_rng(6)).values())
    subset = data.draw(st.permutations(shares))[: data.draw(st.integers(threshold, holders))]
    assert shamir.combine(subset, threshold) == secret


def test_many_secrets_at_once_equal_one_at_a_time():
    rng = seeded_rng(7)
    secrets = {owner: rng(32) for owner in range(6)}
    shares = {
        owner: list(shamir.split(s, 4, range(1 + owner, 8 + owner), rng).values())[owner % 3 :]
        for owner, s in secrets.items()
    }
    assert shamir.combine_many(shares, 4) == secrets
    assert {o: shamir.combine(s, 4) for o, s in shares.items()} == secrets


def test_one_bad_owner_among_many_fails_loudly():
    rng = seeded_rng(8)
    shares = {o: list(shamir.split(rng(32), 3, [1, 2, 3], rng).values()) for o in range(3)}
    shares[1][0] = shamir.Share(1, shares[1][0].y ^ 4)
    with pytest.raises(ProtocolError, match="integrity check"):
        shamir.combine_many(shares, 3)


@settings(max_examples=10, deadline=None)
@given(threshold=st.integers(14, 40), data=st.data())
def test_large_holder_sets_with_large_points_recover_too(threshold, data):
    # Classic SecAgg's large sets take the Lagrange-weights route instead of exact fractions.
    points = data.draw(
        st.lists(st.integers(1, 2**32), min_size=threshold, max_size=threshold, unique=True)
    )
    shares = list(shamir.split(SECRET, threshold, points, seeded_rng(9)).values())
    assert shamir.combine_many({"a": shares, "b": shares[::-1]}, threshold) == {
        "a": SECRET,
        "b": SECRET,
    }
