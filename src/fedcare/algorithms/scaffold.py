"""SCAFFOLD (Karimireddy et al., ICML 2020), option II, both halves.

Client: every local gradient is corrected by (c - c_i), where c is the server's control
variate and c_i the site's own; after K local steps of size lr,
    c_i+ = c_i - c + (x - y_i) / (K lr)
and the site uploads Δy_i = y_i - x and Δc_i = c_i+ - c_i.
Server: x += lr_g * mean(Δy) (the strategy's server optimizer) and c += (|S|/N) mean(Δc).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.spec import AlgorithmSpec, NoParams
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.vectors import FloatVector

SERVER_CONTROL = "scaffold/control"
SITE_CONTROL = "scaffold/control"
UPLOAD_CONTROL_DELTA = "scaffold/control_delta"


@dataclass(frozen=True)
class ScaffoldClient:
    name: str = "scaffold"

    def check_spec(self, spec: TrainSpec) -> TrainSpec:
        if spec.optimizer != "sgd" or spec.momentum != 0.0:
            raise ConfigError(
                "scaffold: the control-variate update (option II) assumes plain local SGD; "
                f"found optimizer '{spec.optimizer}' with momentum {spec.momentum}. "
                "Set local.optimizer: sgd and local.momentum: 0"
            )
        return spec

    def init_server_arrays(self, size: int) -> dict[str, FloatVector]:
        return {SERVER_CONTROL: np.zeros(size, dtype=np.float32)}

    def _site_control(self, state: ServerState, site_state: SiteState) -> FloatVector:
        existing = site_state.get(SITE_CONTROL)
        return existing if existing is not None else np.zeros_like(state.params)

    def objective(self, state: ServerState, site_state: SiteState) -> LocalObjective:
        correction = state.arrays[SERVER_CONTROL] - self._site_control(state, site_state)
        return LocalObjective(correction=correction.astype(np.float32))

    def finish(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, FloatVector, dict[str, FloatVector]]:
        delta = (outcome.params - state.params).astype(np.float32)
        c = state.arrays[SERVER_CONTROL]
        c_i = self._site_control(state, site_state)
        if outcome.num_steps == 0:
            return site_state, delta, {UPLOAD_CONTROL_DELTA: np.zeros_like(c)}
        c_i_new = (c_i - c - delta / (outcome.num_steps * spec.lr)).astype(np.float32)
        new_site_state = dict(site_state)
        new_site_state[SITE_CONTROL] = c_i_new
        return new_site_state, delta, {UPLOAD_CONTROL_DELTA: (c_i_new - c_i).astype(np.float32)}

    def update_server_arrays(
        self, state: ServerState, aggregate: Aggregate, num_sites: int
    ) -> dict[str, FloatVector]:
        mean_dc = aggregate.extras[UPLOAD_CONTROL_DELTA]
        fraction = aggregate.count / max(num_sites, 1)
        return {
            SERVER_CONTROL: (state.arrays[SERVER_CONTROL] + fraction * mean_dc).astype(np.float32)
        }


def scaffold_client(params: NoParams) -> ScaffoldClient:
    return ScaffoldClient()


SPECS = (
    AlgorithmSpec(
        name="scaffold",
        client=scaffold_client,
        hooks=frozenset({"extras"}),
        not_private="its control variates travel beside the update, unclipped and in the clear",
    ),
)
