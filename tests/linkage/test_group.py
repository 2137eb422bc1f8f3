"""X25519 blinding commutes, which is what makes the intersection computable."""

import hashlib

import pytest

from fedcare.core.errors import ProtocolError
from fedcare.linkage.group import blind, new_key


def test_blinding_in_either_order_gives_the_same_elements():
    elements = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(16))
    a, b = new_key(), new_key()
    ab = blind(blind(elements, a, sender="x"), b, sender="y")
    ba = blind(blind(elements, b, sender="y"), a, sender="x")
    assert ab == ba and len(ab) == len(elements)
    assert blind(elements, a, sender="x") != blind(elements, b, sender="y")


def test_a_small_order_element_is_refused_as_not_following_the_protocol():
    with pytest.raises(ProtocolError, match="small order"):
        blind(bytes(32), new_key(), sender="laboratory")  # u = 0: the point of order 2 (or 1)
