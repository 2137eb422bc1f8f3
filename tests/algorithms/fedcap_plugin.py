"""A third-party algorithm, as a plug-in package would ship it (see test_plugin_example.py).

FedCap: FedAvg whose sites cap the norm of the step they upload, so no single site can
move the global model by more than ``max_step`` in a round. The package declares it in
its own ``pyproject.toml``::

    [project.entry-points."fedcare.algorithms"]
    fedcap = "fedcap_plugin:SPEC"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedcare.algorithms.fedavg import FedAvgClient
from fedcare.algorithms.spec import AlgorithmSpec
from fedcare.core.records import LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.vectors import FloatVector


@dataclass(frozen=True)
class CappedStepClient(FedAvgClient):
    max_step: float = 1.0
    name: str = "fedcap"

    def finish(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, FloatVector, dict[str, FloatVector]]:
        site_state, delta, extras = super().finish(state, site_state, outcome, spec)
        norm = float(np.linalg.norm(delta))
        if norm > self.max_step:
            delta = (delta * (self.max_step / norm)).astype(np.float32)
        return site_state, delta, extras


class FedCapParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_step: float = Field(1.0, ge=0)  # the largest L2 step one site may upload


def fedcap_client(params: FedCapParams) -> CappedStepClient:
    return CappedStepClient(max_step=params.max_step)


SPEC = AlgorithmSpec(name="fedcap", client=fedcap_client, params=FedCapParams)
