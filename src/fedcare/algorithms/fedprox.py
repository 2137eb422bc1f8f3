"""FedProx (Li et al., MLSys 2020): local objective + (mu/2) ||w - w_global||^2.

The proximal term keeps heterogeneous sites from drifting far from the global model
during many local steps. The server half is FedAvg's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from fedcare.algorithms.fedavg import FedAvgClient
from fedcare.algorithms.spec import AlgorithmSpec
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, ServerState, SiteState


@dataclass(frozen=True)
class FedProxClient(FedAvgClient):
    """FedAvg's upload and server half; only the local objective differs."""

    mu: float = 0.01
    name: str = "fedprox"

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ConfigError(f"fedprox: mu must be >= 0, found {self.mu}")

    def objective(self, state: ServerState, site_state: SiteState) -> LocalObjective:
        return LocalObjective(prox_mu=self.mu, anchor=state.params)


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mu: float = 0.01  # strength of the proximal term


def fedprox_client(params: FedProxParams) -> FedProxClient:
    return FedProxClient(mu=params.mu)


SPECS = (AlgorithmSpec(name="fedprox", client=fedprox_client, params=FedProxParams),)
