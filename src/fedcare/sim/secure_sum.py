"""Summing site vectors so the coordinator sees only the sum: secure aggregation or CKKS.

The simulator runs the real protocols in process: the SecAgg state machines (pairwise and
self masks, Shamir shares, X25519, AEAD) and TenSEAL's CKKS with the secret key held by
the sites only. So a study's accuracy and bytes under secure summation are the ones a
deployment would see; only the network is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedcare.rounds.secure import SecureSummer, SecureSumResult, secagg_config
from fedcare.secagg.simulate import simulate
from fedcare.transforms.secure import SecureSpec

_PUBLIC_KEY_BYTES = 64  # two X25519 public keys per site (SecAgg's AdvertiseKeys)


@dataclass
class SecAggSummer:
    """One SecAgg (or SecAgg+) session per round over the sampled sites."""

    spec: SecureSpec
    run_seed: int

    def sum(
        self, vectors: Mapping[int, npt.NDArray[np.float32]], round_index: int
    ) -> SecureSumResult:
        ids = tuple(sorted(vectors))
        length = next(iter(vectors.values())).size
        session = hashlib.sha256(
            f"fedcare/sim/secagg/{self.run_seed}/{round_index}".encode()
        ).digest()
        config = secagg_config(self.spec, ids, length, session)
        outcome = simulate(config, dict(vectors))
        masked_bytes = 4 * length  # one uint32 ring element per value
        return SecureSumResult(
            total=np.asarray(outcome.result.total, dtype=np.float32),
            included=frozenset(outcome.result.included),
            upload_bytes=dict.fromkeys(ids, masked_bytes + _PUBLIC_KEY_BYTES),
        )


@dataclass
class EncryptedSummer:
    """CKKS: sites share one secret key (made at the sites); the coordinator adds blind."""

    spec: SecureSpec
    _site: object | None = field(default=None, repr=False)

    def sum(
        self, vectors: Mapping[int, npt.NDArray[np.float32]], round_index: int
    ) -> SecureSumResult:
        from fedcare.he.ckks import generate_keys
        from fedcare.he.secure_sum import HeCoordinator, HeSite

        if self._site is None:
            self._site = HeSite(generate_keys())  # once per run, at the sites
        site = self._site
        if not isinstance(site, HeSite):
            raise TypeError("encrypted summer holds a foreign site object")
        length = next(iter(vectors.values())).size
        coordinator = HeCoordinator(site.public_context(), expected_length=length)
        sent: dict[int, int] = {}
        for c, vector in sorted(vectors.items()):
            payload = site.encrypt_update(vector, 1.0)
            sent[c] = len(payload)
            coordinator.receive(payload, sender=str(c))
        aggregate = site.open_aggregate(coordinator.aggregate())
        return SecureSumResult(
            total=np.asarray(aggregate.weighted_sum, dtype=np.float32),
            included=frozenset(vectors),
            upload_bytes=sent,
        )


def build_summer(spec: SecureSpec, run_seed: int) -> SecureSummer:
    if spec.kind == "encrypt":
        return EncryptedSummer(spec)
    return SecAggSummer(spec, run_seed)
