"""FedAvg (McMahan et al. 2017): sites run local SGD from the global model and upload
the change; the server averages the changes weighted by n_k/n (or uniformly).

Client half: plain local training. Server half: :class:`~fedcare.algorithms.strategy.Strategy`
with the ``sgd`` server optimizer at lr 1, which gives x + sum_k (n_k/n) Δ_k.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.spec import AlgorithmSpec
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


def fedavg_client(params: BaseModel) -> FedAvgClient:
    """FedAvg's client rule, whatever the spec's own parameters configure elsewhere."""
    return FedAvgClient()


FEDAVG = AlgorithmSpec(name="fedavg", client=fedavg_client)
# FedAvg's client rule with another server optimizer (Reddi et al., ICLR 2021) or schedule.
SPECS = (
    FEDAVG,
    AlgorithmSpec(name="fedavgm", client=fedavg_client, server_momentum=0.9),
    AlgorithmSpec(name="fedadam", client=fedavg_client, server_optimizer="adam", server_lr=0.01),
    AlgorithmSpec(name="fedyogi", client=fedavg_client, server_optimizer="yogi", server_lr=0.01),
    AlgorithmSpec(
        name="fedadagrad", client=fedavg_client, server_optimizer="adagrad", server_lr=0.01
    ),
    AlgorithmSpec(
        name="cyclic",
        client=fedavg_client,
        schedule="cyclic",
        not_private="sites hand the model to each other instead of sending updates to sum",
    ),
)
