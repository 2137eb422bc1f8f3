"""FedAvg (McMahan et al. 2017): sites run local SGD from the global model and upload
the change; the server averages the changes weighted by n_k/n (or uniformly).

Client half: plain local training. Server half: :class:`~fedcare.algorithms.strategy.Strategy`
with the ``sgd`` server optimizer at lr 1, which gives x + sum_k (n_k/n) Δ_k.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcare.algorithms.aggregate import Aggregate
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.vectors import FloatVector


@dataclass(frozen=True)
class FedAvgClient:
    name: str = "fedavg"

    def check_spec(self, spec: TrainSpec) -> TrainSpec:
        return spec

    def init_server_arrays(self, size: int) -> dict[str, FloatVector]:
        return {}

    def objective(self, state: ServerState, site_state: SiteState) -> LocalObjective:
        return LocalObjective()

    def finish(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, FloatVector, dict[str, FloatVector]]:
        return site_state, outcome.params - state.params, {}

    def update_server_arrays(
        self, state: ServerState, aggregate: Aggregate, num_sites: int
    ) -> dict[str, FloatVector]:
        return {}
