"""Secure sums as the round core sees them: what a site feeds the sum, how the protocol is
parameterised, and how the coordinator turns the sum into the round's mean.

The simulator and the deployed machines share these, so both run the same protocol
parameters and release the same mean. Who runs the protocol (in process, or between
machines) is behind :class:`SecureSummer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.ring import FixedPointRing
from fedcare.transforms.secure import SecureSpec


def secagg_config(
    spec: SecureSpec, members: Sequence[int], length: int, session_id: bytes
) -> SecAggConfig:
    """The protocol parameters every party of one secure sum derives from the plan."""
    ids = tuple(sorted(members))
    if len(ids) < 2:
        raise ConfigError(
            f"secure aggregation needs at least 2 sites in a round, found {len(ids)}; "
            "raise the participation fraction or min_sites"
        )
    degree = spec.degree if spec.degree and spec.degree < len(ids) - 1 else None
    holders = (degree if degree else len(ids) - 1) + 1
    threshold = max(holders // 2 + 1, math.ceil(spec.threshold * holders))
    return SecAggConfig(
        session_id=session_id,
        client_ids=ids,
        vector_length=length,
        threshold=min(threshold, holders),
        ring=FixedPointRing(clip=spec.value_range, max_clients=len(ids)),
        degree=degree,
    )


def secure_input(
    delta: npt.NDArray[np.float32], weight: float, weight_scale: float, *, private: bool
) -> npt.NDArray[np.float32]:
    """What a site feeds the secure sum.

    With client-level DP, its clipped and noised update (DP-FedAvg sums them unweighted);
    otherwise ``[w * delta, w]`` with ``w = weight / weight_scale`` (public and at most 1,
    so every entry stays inside the ring), from which the coordinator takes the mean.
    """
    if private:
        return np.ascontiguousarray(delta, dtype=np.float32)
    w = np.float32(weight / weight_scale)
    return np.concatenate([delta * w, [w]]).astype(np.float32)


def mean_of_sum(total: npt.NDArray[np.float32], round_index: int) -> npt.NDArray[np.float32]:
    """The weighted mean update from the sum of ``[w * delta, w]`` vectors."""
    weight = float(total[-1])
    if not weight > 0:
        raise ProtocolError(f"secure sum of round {round_index} carries no weight")
    mean: npt.NDArray[np.float32] = (total[:-1] / weight).astype(np.float32)
    return mean


@dataclass(frozen=True)
class SecureSumResult:
    """The unmasked (or decrypted) sum, whose inputs it holds, and what each site sent."""

    total: npt.NDArray[np.float32]
    included: frozenset[int]
    upload_bytes: Mapping[int, int]


class SecureSummer(Protocol):
    """Runs one round's secure sum over the sites' inputs (keyed by site index)."""

    def sum(
        self, vectors: Mapping[int, npt.NDArray[np.float32]], round_index: int
    ) -> SecureSumResult: ...
