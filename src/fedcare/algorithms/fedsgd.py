"""FedSGD (McMahan et al. 2017, the baseline of FedAvg): each site computes one gradient
of its whole local data at the global model and uploads it; the server takes one step.

The client half runs exactly one full-batch step of plain SGD with lr 1, so the uploaded
delta is -grad; the server optimizer's lr is the step size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedcare.algorithms.fedavg import FedAvgClient
from fedcare.algorithms.spec import AlgorithmSpec, NoParams
from fedcare.core.records import TrainSpec


@dataclass(frozen=True)
class FedSGDClient(FedAvgClient):
    """FedAvg's upload and server half with one full-batch gradient step of size 1."""

    name: str = "fedsgd"

    def check_spec(self, spec: TrainSpec) -> TrainSpec:
        return replace(
            spec, optimizer="sgd", lr=1.0, momentum=0.0, epochs=None, steps=1, batch_size=None
        )


def fedsgd_client(params: NoParams) -> FedSGDClient:
    return FedSGDClient()


# The server lr is the step size of the one gradient step a round takes.
SPECS = (AlgorithmSpec(name="fedsgd", client=fedsgd_client, server_lr=0.1),)
