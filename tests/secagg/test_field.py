"""Interpolation at zero in GF(2**521 - 1), the maths under Shamir reconstruction."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.secagg.field import PRIME, evaluate, interpolate_at_zero, lagrange_at_zero

coefficients = st.lists(st.integers(0, PRIME - 1), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(polys=st.lists(coefficients, min_size=1, max_size=5), data=st.data())
def test_every_polynomial_is_recovered_at_zero(polys, data):
    sets = []
    for poly in polys:
        xs = data.draw(
            st.lists(
                st.integers(1, data.draw(st.sampled_from([60, 2**32, PRIME - 1]))),
                min_size=len(poly),
                max_size=len(poly),
                unique=True,
            )
        )
        sets.append([(x, evaluate(poly, x)) for x in xs])
    assert interpolate_at_zero(sets) == [poly[0] for poly in polys]


def test_both_routes_agree_with_the_lagrange_weights():
    poly = list(range(3, 43))  # degree 39: large enough for the weights route
    for xs in (tuple(range(1, 8)), tuple(range(5, 45)), (2**32, 7, 2**31 + 5)):
        points = [(x, evaluate(poly[: len(xs)], x)) for x in xs]
        weights = lagrange_at_zero(xs)
        expected = sum(w * y for w, (_, y) in zip(weights, points, strict=True)) % PRIME
        assert interpolate_at_zero([points]) == [expected]


def test_repeated_or_zero_points_are_refused():
    with pytest.raises(ProtocolError, match="distinct"):
        interpolate_at_zero([[(1, 5), (1, 6)]])
    with pytest.raises(ProtocolError, match="non-zero"):
        interpolate_at_zero([[(0, 5), (1, 6)]])
