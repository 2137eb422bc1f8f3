"""One round's encrypted sum in a deployed run: CKKS, the secret key at the sites only.

The hospitals share one CKKS key set among themselves (``fedcare site he-keys create`` at
one of them, the file handed to the others the way they would hand over any study secret);
the coordinator never holds it. Each member encrypts the vector the simulator feeds the
secure sum (:func:`~fedcare.runtime.secure_round.secure_input`) and sends it with the
public context (parameters and key id, ~100 bytes) as an ``he`` envelope
(step ``encrypted_update``). The coordinator adds the ciphertexts blind
(:class:`~fedcare.he.secure_sum.HeCoordinator`) and asks one contributor to decrypt the
aggregate (step ``decrypt``); that site refuses to decrypt anything that is not a sum of at
least two updates, and answers the plain sum (``decrypted_sum``). If the decrypting site
drops, the next contributor is asked. Like SecAgg, this assumes an honest-but-curious
coordinator: the summand count travels with the ciphertext and is not proven.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import FedcareError, ProtocolError
from fedcare.he.ckks import CkksKeys, public_context_bytes
from fedcare.he.secure_sum import HeCoordinator, HeSite
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.secure_round import Addressed, SumOutcome
from fedcare.runtime.secure_wire import secure_header

HE = "he"
MIN_SUMMANDS = 2  # a site never decrypts a single site's update


def _payload(env: Envelope, what: str) -> bytes:
    if env.vector is None or env.vector.dtype != np.uint8:
        raise ProtocolError(f"'{what}' from '{env.sender or '?'}' must carry its bytes (uint8)")
    return env.vector.tobytes()


def encrypted_update(
    keys: CkksKeys,
    vector: npt.NDArray[np.float32],
    *,
    session: bytes,
    run_id: str,
    round_: int,
    attempt: int,
    **meta: Any,
) -> Envelope:
    """A member's encrypted input with the public context and its stated counts."""
    payload = HeSite(keys).encrypt_update(vector, 1.0)
    context = base64.b64encode(public_context_bytes(keys)).decode("ascii")
    header = secure_header("encrypted_update", session, attempt, context=context, **meta)
    data = np.frombuffer(payload, dtype=np.uint8)
    return Envelope.create(HE, run_id, round_, header=header, vector=data)


def decrypt_request(env: Envelope, keys: CkksKeys, site: str) -> Envelope:
    """At the site: decrypt the aggregate it is asked to open, if it is a real sum."""
    aggregate = HeSite(keys, name=site).open_aggregate(_payload(env, "decrypt"))
    if aggregate.summands < MIN_SUMMANDS:
        raise ProtocolError(
            f"site '{site}' refuses to decrypt an aggregate of {aggregate.summands} update(s); "
            f"it opens sums of at least {MIN_SUMMANDS}"
        )
    # The encrypted vector is [input..., 1]: the input sum, then how many were added.
    header = dict(env.header, step="decrypted_sum", summands=aggregate.summands)
    total = np.ascontiguousarray(aggregate.weighted_sum, dtype=np.float32)
    return Envelope.create(HE, env.run_id, env.round, header=header, vector=total)


@dataclass
class EncryptedSumCollector:
    """The coordinator's side of one round's CKKS sum over the round's member sites."""

    members: tuple[int, ...]
    length: int  # values per input
    session: bytes
    stage_timeout_s: float
    deadline: float
    run_id: str
    round: int
    attempt: int
    waiting: set[int] = field(init=False)
    lost: dict[int, str] = field(default_factory=dict)
    included: list[int] = field(default_factory=list)
    decryptor: int | None = None
    _adder: HeCoordinator | None = field(default=None, repr=False)
    _aggregate: bytes = field(default=b"", repr=False)
    _total: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    _aborted: bool = False

    def __post_init__(self) -> None:
        self.waiting = set(self.members)

    @property
    def done(self) -> bool:
        return self._total is not None

    @property
    def aborted(self) -> bool:
        return self._aborted

    def outcome(self) -> SumOutcome:
        if self._total is None:
            raise ProtocolError("the encrypted sum has not been decrypted yet")
        return SumOutcome(self._total, frozenset(self.included))

    def receive(self, member: int, env: Envelope, now: float) -> list[Addressed]:
        step = env.header.get("step")
        if member not in self.waiting:
            raise ProtocolError(f"site #{member} is not awaited by this encrypted sum")
        if self.decryptor is None and step == "encrypted_update":
            self._add(member, env)
            self.waiting.discard(member)
            return self._advance(now)
        if member == self.decryptor and step == "decrypted_sum":
            total = env.vector
            if total is None or total.dtype != np.float32 or total.shape != (self.length,):
                raise ProtocolError(
                    f"decrypted sum from site #{member} must be {self.length} float32 values"
                )
            if env.header.get("summands") != len(self.included):
                raise ProtocolError(f"site #{member} decrypted a sum of another size")
            self._total = total
            self.waiting.clear()
            return []
        raise ProtocolError(f"site #{member} sent '{step}' out of turn")

    def drop(self, member: int, reason: str, now: float) -> list[Addressed]:
        if member not in self.waiting:
            return []
        self.waiting.discard(member)
        self.lost[member] = reason
        if member == self.decryptor:
            return self._ask_next(now)
        return self._advance(now)

    def expire(self, now: float) -> list[Addressed]:
        if self.done or now < self.deadline:
            return []
        stage = "decryption" if self.decryptor is not None else "encrypted update"
        for member in sorted(self.waiting):
            self.lost[member] = f"missed the {stage} deadline"
        waiting, self.waiting = self.waiting, set()
        if self.decryptor is not None and self.decryptor in waiting:
            return self._ask_next(now)
        return self._advance(now)

    def _add(self, member: int, env: Envelope) -> None:
        try:
            if self._adder is None:  # later payloads must match its key id (checked on add)
                context = base64.b64decode(str(env.header.get("context", "")), validate=True)
                self._adder = HeCoordinator(context, expected_length=self.length)
            self._adder.receive(_payload(env, "encrypted_update"), sender=str(member))
        except (FedcareError, binascii.Error, ValueError) as exc:
            raise ProtocolError(f"encrypted update of site #{member} refused: {exc}") from exc
        self.included.append(member)

    def _advance(self, now: float) -> list[Addressed]:
        if self.waiting or self.decryptor is not None:
            return []
        if len(self.included) < MIN_SUMMANDS or self._adder is None:
            self._aborted = True
            raise ProtocolError(
                f"only {len(self.included)} encrypted update(s) arrived; a sum needs "
                f"{MIN_SUMMANDS} (a single update would be decrypted as it is)"
            )
        self._aggregate = self._adder.aggregate()
        return self._ask_next(now)

    def _ask_next(self, now: float) -> list[Addressed]:
        """Ask the next contributor still here (in plan order) to decrypt the aggregate."""
        candidates = [m for m in sorted(self.included) if m not in self.lost]
        if not candidates:
            self._aborted = True
            raise ProtocolError("every contributor left before the aggregate was decrypted")
        self.decryptor = candidates[0]
        self.waiting = {self.decryptor}
        self.deadline = now + self.stage_timeout_s
        header = secure_header("decrypt", self.session, self.attempt, summands=len(self.included))
        data = np.frombuffer(self._aggregate, dtype=np.uint8)
        return [(self.decryptor, Envelope.create(HE, self.run_id, self.round, header, data))]
