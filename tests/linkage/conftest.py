"""Shared helpers: a study secret and keyed inputs built from plain identifier lists."""

import pytest

from fedcare.linkage import IdentifierRules, keyed_identifiers

SECRET = b"per-study secret, 32 bytes long!"


def keyed(party: str, identifiers: list[str], rules: IdentifierRules | None = None):
    return keyed_identifiers(
        [identifiers], rules or IdentifierRules(), SECRET, party=party, column="id"
    )


@pytest.fixture
def secret() -> bytes:
    return SECRET
