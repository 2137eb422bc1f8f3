"""HE secure sum: sites encrypt weighted updates, the coordinator adds ciphertexts blind.

The flow the runtime drives (sans-IO: these objects take and return bytes, never touch
a socket)::

    site:        payload = HeSite.encrypt_update(delta, weight)        -> coordinator
    coordinator: HeCoordinator.receive(payload, sender=...) per site
                 aggregate = HeCoordinator.aggregate()                   -> every site
    site:        total = HeSite.decrypt_aggregate(aggregate)   (sum of weight * delta)

Each payload encrypts ``[weight * delta..., weight]``: the extra slot carries the weight
so the sum of weights arrives encrypted too, and :meth:`HeSite.open_aggregate` can
return the weighted mean without any site revealing its size. The coordinator holds
only the public context and learns nothing but ciphertext sizes and who sent one.
Bytes on the wire are counted on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.core.vectors import FloatVector
from fedcare.he.ckks import (
    CkksAccumulator,
    CkksKeys,
    CkksPublicContext,
    decrypt_vector,
    encrypt_vector,
    load_public_context,
    public_context_bytes,
)
from fedcare.he.encrypted_vector import EncryptedVector


@dataclass(frozen=True, eq=False)
class HeAggregate:
    """A decrypted aggregate: the weighted sum, the summed weights and how many sites."""

    weighted_sum: FloatVector
    total_weight: float
    summands: int

    def mean(self) -> FloatVector:
        """The weighted average of the updates (weighted sum / sum of weights)."""
        if not self.total_weight > 0:
            raise ProtocolError(
                f"aggregate has total weight {self.total_weight}; a weighted mean needs a "
                f"positive total"
            )
        return (self.weighted_sum / np.float32(self.total_weight)).astype(np.float32)


class HeSite:
    """A key holder: encrypts its own update and decrypts the aggregate."""

    def __init__(self, keys: CkksKeys, *, name: str = "site") -> None:
        self.keys = keys
        self.name = name
        self.bytes_sent = 0
        self.bytes_received = 0

    def public_context(self) -> bytes:
        """The coordinator's context (parameters and key id, no key); counted as bytes sent."""
        data = public_context_bytes(self.keys)
        self.bytes_sent += len(data)
        return data

    def encrypt_update(self, delta: npt.ArrayLike, weight: float = 1.0) -> bytes:
        """Encrypt ``weight * delta`` plus the weight itself, ready for the coordinator."""
        if not (math.isfinite(weight) and weight >= 0):
            raise UpdateRejectedError(
                f"site '{self.name}': aggregation weight must be finite and non-negative, "
                f"found {weight}"
            )
        x = np.asarray(delta)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise UpdateRejectedError(
                f"site '{self.name}': update must be a flat float vector, found shape "
                f"{x.shape} dtype {x.dtype}"
            )
        scaled = np.empty(x.size + 1, dtype=np.float64)
        np.multiply(x, weight, out=scaled[:-1])
        scaled[-1] = weight
        payload = encrypt_vector(self.keys, scaled, source=f"site '{self.name}'").to_bytes()
        self.bytes_sent += len(payload)
        return payload

    def open_aggregate(self, data: bytes) -> HeAggregate:
        """Decrypt an aggregate: weighted sum, total weight and number of summands."""
        self.bytes_received += len(data)
        source = f"aggregate received by site '{self.name}'"
        vector = EncryptedVector.from_bytes(data, source=source)
        values = decrypt_vector(self.keys, vector, source=source)
        return HeAggregate(
            weighted_sum=values[:-1].copy(),
            total_weight=float(values[-1]),
            summands=vector.summands,
        )

    def decrypt_aggregate(self, data: bytes) -> FloatVector:
        """The float32 sum of ``weight * delta`` over every site in the aggregate."""
        return self.open_aggregate(data).weighted_sum


class CoordinatorState(Enum):
    COLLECTING = "collecting"
    DONE = "done"


class HeCoordinator:
    """Adds encrypted payloads with the public context; one instance per round.

    ``expected_length`` (parameters + 1 weight slot is added here) refuses a payload of
    the wrong model size before any ciphertext is parsed. Each sender may contribute once.
    """

    def __init__(
        self,
        context: bytes | bytearray | memoryview | CkksPublicContext,
        *,
        expected_length: int | None = None,
        max_summands: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        if isinstance(context, bytes | bytearray | memoryview):
            self.bytes_received = len(context)
            context = load_public_context(bytes(context), n_threads=n_threads)
        elif isinstance(context, CkksPublicContext):
            self.bytes_received = 0
        else:
            raise ConfigError(
                f"the coordinator takes public context bytes or a CkksPublicContext, found "
                f"{type(context).__name__}; it must never hold the sites' keys"
            )
        self.context = context
        self._acc = CkksAccumulator(context, max_summands=max_summands)
        self._key_id = context.key_id
        self._length = None if expected_length is None else expected_length + 1
        self.state = CoordinatorState.COLLECTING
        self.senders: list[str] = []
        self.bytes_sent = 0

    def receive(self, payload: bytes, *, sender: str) -> None:
        """Validate one site's payload and add it to the running sum."""
        if self.state is not CoordinatorState.COLLECTING:
            raise ProtocolError(
                f"payload from '{sender}' arrived after the aggregate was produced "
                f"(state {self.state.value})"
            )
        if sender in self.senders:
            raise UpdateRejectedError(f"site '{sender}' already sent a payload this round")
        self.bytes_received += len(payload)
        source = f"payload from site '{sender}'"
        vector = EncryptedVector.from_bytes(payload, source=source)
        if vector.summands != 1:
            raise UpdateRejectedError(
                f"{source}: claims to sum {vector.summands} vectors, a site sends exactly 1"
            )
        if self._length is not None and vector.length != self._length:
            raise UpdateRejectedError(
                f"{source}: {vector.length - 1} parameters, expected {self._length - 1}"
            )
        self._acc.add(vector, source=source)
        self.senders.append(sender)

    def aggregate(self) -> bytes:
        """The encrypted sum of every payload received; ends the round.

        ``bytes_sent`` counts it once; the transport sends it to each site.
        """
        if self.state is not CoordinatorState.COLLECTING:
            raise ProtocolError("the aggregate of this round was already produced")
        data = self._acc.result().to_bytes()
        self.state = CoordinatorState.DONE
        self.bytes_sent += len(data)
        return data

    def add(self, payloads: Iterable[bytes]) -> bytes:
        """Receive payloads (senders named by position) and return their encrypted sum."""
        for index, payload in enumerate(payloads):
            self.receive(payload, sender=f"#{index}")
        return self.aggregate()
