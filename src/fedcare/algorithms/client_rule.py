"""The client half of an algorithm, as a protocol every rule module implements.

A client rule says what a site minimises locally (:class:`LocalObjective`), what it uploads
after training, and how the server folds the uploaded extras into its own state. The
server optimizer is separate (composition, not subclassing): FedAdam = FedAvg's rule +
the Adam server optimizer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fedcare.algorithms.aggregate import Aggregate
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.vectors import FloatVector


class ClientRule(Protocol):
    @property
    def name(self) -> str:
        """Short identifier, e.g. 'scaffold'."""
        ...

    def check_spec(self, spec: TrainSpec) -> TrainSpec:
        """Return the local training spec this rule runs with, or raise ConfigError."""
        ...

    def init_server_arrays(self, size: int) -> dict[str, FloatVector]:
        """Extra server arrays (e.g. SCAFFOLD's global control variate)."""
        ...

    def objective(self, state: ServerState, site_state: SiteState) -> LocalObjective:
        """What the site minimises this round, given the server state and its own state."""
        ...

    def finish(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, FloatVector, dict[str, FloatVector]]:
        """After local training: (new site state, delta to upload, extras to upload)."""
        ...

    def update_server_arrays(
        self, state: ServerState, aggregate: Aggregate, num_sites: int
    ) -> dict[str, FloatVector]:
        """New values of the rule's server arrays after a round."""
        ...


@runtime_checkable
class OwnWeight(Protocol):
    """A client rule that sets its update's aggregation weight itself (q-FedAvg's h_k).

    Without this hook an update weighs its sample count (or 1, under uniform weighting).
    """

    def own_weight(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> float:
        """The weight of the update :meth:`ClientRule.finish` returns for ``outcome``."""
        ...
