"""Homomorphic encryption: sites encrypt updates, the coordinator sums them blind.

- :mod:`fedcare.he.ckks`: CKKS (TenSEAL) for whole models; a float32 vector is packed
  ``slots`` values per ciphertext and costs about 8x its float32 bytes.
- :mod:`fedcare.he.paillier`: Paillier (phe) for short vectors, exact in fixed point.
- :mod:`fedcare.he.secure_sum`: the sans-IO flow the runtime drives (site encrypts,
  coordinator adds with the public context only, sites decrypt).

Scope: semi-honest coordinator; single-key HE, so every site holds the secret key and a
site colluding with the coordinator could decrypt other sites' updates (use secure
aggregation, :mod:`fedcare.secagg`, where that matters). TenSEAL and phe come with the
``he`` extra and are imported on first use.
"""

from fedcare.he.ckks import (
    CkksAccumulator,
    CkksKeys,
    CkksPublicContext,
    add_encrypted,
    decrypt_vector,
    encrypt_vector,
    generate_keys,
    load_public_context,
    load_secret_context,
    public_context_bytes,
    secret_context_bytes,
)
from fedcare.he.encrypted_vector import EncryptedVector
from fedcare.he.params import CkksParams
from fedcare.he.secure_sum import CoordinatorState, HeAggregate, HeCoordinator, HeSite

__all__ = [
    "CkksAccumulator",
    "CkksKeys",
    "CkksParams",
    "CkksPublicContext",
    "CoordinatorState",
    "EncryptedVector",
    "HeAggregate",
    "HeCoordinator",
    "HeSite",
    "add_encrypted",
    "decrypt_vector",
    "encrypt_vector",
    "generate_keys",
    "load_public_context",
    "load_secret_context",
    "public_context_bytes",
    "secret_context_bytes",
]
