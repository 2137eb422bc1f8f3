"""One CKKS key set per test module: key generation is cheap, but TenSEAL work is not."""

from __future__ import annotations

import pytest

from fedcare.he import CkksKeys, CkksPublicContext, generate_keys, load_public_context
from fedcare.he.ckks import public_context_bytes


@pytest.fixture(scope="module")
def keys() -> CkksKeys:
    return generate_keys(n_threads=1)


@pytest.fixture(scope="module")
def coordinator_context(keys: CkksKeys) -> CkksPublicContext:
    return load_public_context(public_context_bytes(keys), n_threads=1)
