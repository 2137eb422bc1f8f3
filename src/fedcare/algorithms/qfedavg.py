"""q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020).

Sites with a higher loss get more say, so the global model does not leave one hospital
behind: with L = 1/lr, F_k the site's loss at the global model w,
    Δw_k = L (w - w_k),  Δ_k = F_k^q Δw_k,  h_k = q F_k^(q-1) ||Δw_k||² + L F_k^q,
    w+ = w - Σ Δ_k / Σ h_k.
q = 0 is FedAvg with uniform weights. The site uploads d_k = -Δ_k / h_k with aggregation
weight h_k, so the streaming weighted mean Σ h_k d_k / Σ h_k is exactly the q-FedAvg step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcare.algorithms.fedavg import FedAvgClient
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.vectors import FloatVector


@dataclass(frozen=True)
class QFedAvgClient(FedAvgClient):
    q: float = 1.0
    name: str = "qfedavg"
    needs_start_loss: bool = True

    def __post_init__(self) -> None:
        if self.q < 0:
            raise ConfigError(f"qfedavg: q must be >= 0, found {self.q}")

    def finish(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, FloatVector, dict[str, FloatVector]]:
        upload, _ = self._step(state, outcome, spec)
        return site_state, upload, {}

    def own_weight(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> float:
        """h_k: the update's aggregation weight (the :class:`OwnWeight` hook)."""
        return self._step(state, outcome, spec)[1]

    def _step(
        self, state: ServerState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[FloatVector, float]:
        """(d_k, h_k) for one site's outcome."""
        if outcome.start_loss is None:
            raise ConfigError("qfedavg needs each site's loss at the global model (start_loss)")
        lipschitz = 1.0 / spec.lr
        loss = max(float(outcome.start_loss), 1e-10)
        dw = lipschitz * (state.params.astype(np.float64) - outcome.params)
        h = self.q * loss ** (self.q - 1) * float(dw @ dw) + lipschitz * loss**self.q
        upload = (-(loss**self.q) * dw / h).astype(np.float32)
        # The weight travels as float32, as it did when it was an uploaded extra.
        return upload, float(np.float32(h))
