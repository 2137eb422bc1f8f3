"""One aggregation object per round: ``add`` updates, ``merge`` partials, ``result()``.

Every way fedcare combines a round's updates is one of these objects, so a driver never
chooses between plain, robust, private or secure aggregation: it adds what arrives and asks
for the result. :func:`fedcare.rounds.compose.new_aggregator` builds the right one from
the strategy's declarations.

- ``add(update, site)``: one site's decoded update; ``add_block`` K stacked updates at once
  (the batched simulator); ``open(site, weight, extras)`` an :class:`UpdateSink` that takes
  one update chunk by chunk as it arrives (the deployed coordinator).
- ``merge(other)``: fold in another aggregator of the same round built with ``empty()``
  (another worker's sites, another level of a hierarchy); the result is the one a single
  aggregator fed every update would give (up to float64 summation order).
- ``result()``: the round's :class:`RoundAggregate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from fedcare.algorithms.aggregate import Aggregate, StreamingMean
from fedcare.algorithms.robust import RobustAggregator as RobustRule
from fedcare.core.errors import ProtocolError
from fedcare.core.records import ClientUpdate
from fedcare.core.vectors import FloatVector
from fedcare.privacy.client_level import PrivateRounds
from fedcare.rounds.secure import SecureSummer, mean_of_sum, secure_input


@dataclass(frozen=True)
class RoundAggregate:
    """The round's combined update, and what each site's upload cost on the wire where
    the aggregation itself decides it (a secure sum replaces the plain upload)."""

    aggregate: Aggregate
    upload_bytes: Mapping[int, int] = field(default_factory=dict)


class UpdateSink(Protocol):
    """One update arriving in pieces: ``add_chunk`` each piece in order, then ``commit``."""

    def add_chunk(self, offset: int, values: FloatVector) -> None: ...

    def commit(self) -> None: ...


class Aggregator(Protocol):
    size: int

    def add(self, update: ClientUpdate, site: int) -> None: ...

    def add_block(
        self,
        sites: Sequence[int],
        deltas: npt.NDArray[np.float32],
        weights: npt.NDArray[np.float64],
    ) -> None: ...

    def open(
        self, site: int, weight: float, extras: Mapping[str, FloatVector] | None = None
    ) -> UpdateSink: ...

    def empty(self) -> Aggregator: ...

    def merge(self, other: Aggregator) -> None: ...

    def result(self) -> RoundAggregate: ...


@dataclass
class _BufferedSink:
    """Collects one update's pieces, then adds it whole (rules that need the whole update)."""

    target: Aggregator
    site: int
    weight: float
    extras: Mapping[str, FloatVector]
    _values: npt.NDArray[np.float32] = field(init=False)
    _next: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._values = np.zeros(self.target.size, dtype=np.float32)

    def add_chunk(self, offset: int, values: FloatVector) -> None:
        _check_piece(self._next, offset, values, self.target.size)
        self._values[offset : offset + values.size] = values
        self._next = offset + values.size

    def commit(self) -> None:
        _check_complete(self._next, self.target.size)
        update = ClientUpdate(self._values, self.weight, dict(self.extras))
        self.target.add(update, self.site)


def _check_piece(expected: int, offset: int, values: FloatVector, size: int) -> None:
    if offset != expected or values.ndim != 1 or offset + values.size > size:
        raise ProtocolError(
            f"update chunk of {values.size} values at offset {offset}: expected the next "
            f"chunk at offset {expected} of an update of {size} values"
        )


def _check_complete(received: int, size: int) -> None:
    if received != size:
        raise ProtocolError(f"update ended after {received} of its {size} values")


class AddsEach(ABC):
    """``add_block`` and ``open`` for aggregators that take updates one at a time."""

    size: int

    @abstractmethod
    def add(self, update: ClientUpdate, site: int) -> None: ...

    def add_block(
        self,
        sites: Sequence[int],
        deltas: npt.NDArray[np.float32],
        weights: npt.NDArray[np.float64],
    ) -> None:
        for site, delta, weight in zip(sites, deltas, weights, strict=True):
            self.add(ClientUpdate(delta, float(weight)), site)

    def open(
        self, site: int, weight: float, extras: Mapping[str, FloatVector] | None = None
    ) -> UpdateSink:
        return _BufferedSink(self, site, weight, extras or {})  # type: ignore[arg-type]


@dataclass
class _MeanSink:
    mean: StreamingMean
    weight: float
    extras: Mapping[str, FloatVector]
    _next: int = 0

    def add_chunk(self, offset: int, values: FloatVector) -> None:
        _check_piece(self._next, offset, values, self.mean.size)
        self.mean.add_chunk(offset, values, self.weight)
        self._next = offset + values.size

    def commit(self) -> None:
        _check_complete(self._next, self.mean.size)
        self.mean.count_update(self.weight, dict(self.extras))


@dataclass
class MeanAggregator:
    """The weighted mean of the deltas (FedAvg's n_k/n), uniform mean of the extras.

    Streams: memory is one float64 sum, whatever the number of sites or pieces.
    """

    size: int
    mean: StreamingMean = field(init=False)

    def __post_init__(self) -> None:
        self.mean = StreamingMean(self.size)

    def add(self, update: ClientUpdate, site: int) -> None:
        self.mean.add(update.delta, update.weight, update.extras)

    def add_block(
        self,
        sites: Sequence[int],
        deltas: npt.NDArray[np.float32],
        weights: npt.NDArray[np.float64],
    ) -> None:
        self.mean.add_block(deltas, weights)

    def open(
        self, site: int, weight: float, extras: Mapping[str, FloatVector] | None = None
    ) -> UpdateSink:
        return _MeanSink(self.mean, weight, extras or {})

    def empty(self) -> MeanAggregator:
        return MeanAggregator(self.size)

    def merge(self, other: Aggregator) -> None:
        self.mean.merge(_same(self, other).mean)

    def result(self) -> RoundAggregate:
        return RoundAggregate(self.mean.result())


@dataclass
class RobustAggregator(AddsEach):
    """A robust rule (median, trimmed mean, Krum, ...) over every update of the round.

    The rule needs all updates at once, so this keeps them (merge concatenates); the
    extras keep their uniform mean.
    """

    size: int
    rule: RobustRule
    deltas: list[FloatVector] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    extras: StreamingMean = field(init=False)

    def __post_init__(self) -> None:
        self.extras = StreamingMean(0)

    def add(self, update: ClientUpdate, site: int) -> None:
        if update.delta.shape != (self.size,):
            raise ValueError(f"delta has shape {update.delta.shape}, expected ({self.size},)")
        self.deltas.append(update.delta)
        self.weights.append(float(update.weight))
        self.extras.count_update(update.weight, update.extras)

    def empty(self) -> RobustAggregator:
        return RobustAggregator(self.size, self.rule)

    def merge(self, other: Aggregator) -> None:
        other = _same(self, other)
        self.deltas.extend(other.deltas)
        self.weights.extend(other.weights)
        self.extras.merge(other.extras)

    def result(self) -> RoundAggregate:
        if not self.deltas:
            raise ValueError("no update with positive weight was aggregated this round")
        weights = np.array(self.weights, dtype=np.float64)
        delta = self.rule(np.stack(self.deltas), weights)
        mean = self.extras.result()  # the extras' uniform mean, total weight and count
        return RoundAggregate(Aggregate(delta, mean.extras, mean.total_weight, mean.count))


@dataclass
class PrivateAggregator(AddsEach):
    """Client-level DP without a secure sum: the sum of the (clipped) updates, released
    with DP-FedAvg's noise and fixed denominator by :class:`PrivateRounds`.

    Central DP clips each update here (at the trusted coordinator) and noises the sum in
    :meth:`result`; local DP's updates arrive noised and are averaged over the expected
    number of sites. ``privacy`` must have opened ``round_index`` (it keys the noise).
    """

    size: int
    privacy: PrivateRounds
    round_index: int
    cohort: int
    total: npt.NDArray[np.float64] = field(init=False)
    participants: int = 0
    unclipped: int = 0

    def __post_init__(self) -> None:
        self.total = np.zeros(self.size, dtype=np.float64)

    def add(self, update: ClientUpdate, site: int) -> None:
        vector, within = self.privacy.clip(update.delta)
        self.total += vector
        self.participants += 1
        self.unclipped += int(within)

    def empty(self) -> PrivateAggregator:
        return PrivateAggregator(self.size, self.privacy, self.round_index, self.cohort)

    def merge(self, other: Aggregator) -> None:
        other = _same(self, other)
        self.total += other.total
        self.participants += other.participants
        self.unclipped += other.unclipped

    def result(self) -> RoundAggregate:
        delta = self.privacy.release_sum(
            self.round_index,
            self.total,
            participants=self.participants,
            unclipped=self.unclipped,
        )
        return RoundAggregate(Aggregate(delta, {}, float(self.cohort), self.cohort))


@dataclass
class SecureSumAggregator(AddsEach):
    """A secure sum (SecAgg masking or CKKS encryption): the coordinator learns only the
    sum of the sites' inputs.

    Each site's input is :func:`~fedcare.rounds.secure.secure_input` (``[w * delta, w]``,
    or the DP-noised update); ``result()`` runs ``summer`` over them and takes the mean (or
    the DP release) of the sum. A coordinator whose protocol produced the sum between
    machines calls :meth:`release` with it instead.
    """

    size: int
    summer: SecureSummer | None
    round_index: int
    cohort: int
    weight_scale: float
    privacy: PrivateRounds | None = None
    inputs: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)

    def add(self, update: ClientUpdate, site: int) -> None:
        if site in self.inputs:
            raise ProtocolError(f"site {site} already added its input to this secure sum")
        self.inputs[site] = secure_input(
            update.delta, update.weight, self.weight_scale, private=self.privacy is not None
        )

    def empty(self) -> SecureSumAggregator:
        return SecureSumAggregator(
            self.size, self.summer, self.round_index, self.cohort, self.weight_scale, self.privacy
        )

    def merge(self, other: Aggregator) -> None:
        other = _same(self, other)
        for site, vector in other.inputs.items():
            if site in self.inputs:
                raise ProtocolError(f"site {site} is in both partial secure sums")
            self.inputs[site] = vector

    def result(self) -> RoundAggregate:
        if self.summer is None:
            raise ProtocolError("this secure sum runs between machines: call release(total)")
        summed = self.summer.sum(self.inputs, self.round_index)
        return RoundAggregate(
            self.release(summed.total, len(summed.included)), dict(summed.upload_bytes)
        )

    def release(self, total: npt.NDArray[np.float32], received: int) -> Aggregate:
        """The round's aggregate from the unmasked sum of ``received`` sites' inputs."""
        if self.privacy is None:
            delta = mean_of_sum(total, self.round_index)
        else:
            delta = self.privacy.release_sum(
                self.round_index,
                total,
                participants=0,
                unclipped=0,
                cohort=self.cohort,
                received=received,
            )
        return Aggregate(delta, {}, float(self.cohort), self.cohort)


A = TypeVar("A")


def _same(mine: A, other: object) -> A:
    if type(other) is not type(mine):
        raise TypeError(f"cannot merge a {type(other).__name__} into a {type(mine).__name__}")
    return other
