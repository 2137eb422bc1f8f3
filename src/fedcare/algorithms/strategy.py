"""A federated strategy = a client rule + a server optimizer + a weighting + a schedule.

This is the whole server half of every horizontal algorithm; the per-algorithm maths
lives in the client-rule modules and in :mod:`fedcare.algorithms.server_optim`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedcare.algorithms.aggregate import Aggregate, StreamingMean, Weighting, aggregation_weight
from fedcare.algorithms.client_rule import ClientRule, OwnWeight
from fedcare.algorithms.personal import Personalisation
from fedcare.algorithms.robust import RobustAggregator, build_robust_aggregator
from fedcare.algorithms.server_optim import ServerOptimizer
from fedcare.core.records import (
    ClientUpdate,
    LocalObjective,
    LocalOutcome,
    ServerState,
    SiteState,
    TrainSpec,
)
from fedcare.core.vectors import FloatVector
from fedcare.privacy.spec import DPSpec, SampleDPSpec
from fedcare.transforms.pipeline import UploadPipeline
from fedcare.transforms.secure import SecureSpec

Schedule = Literal["parallel", "cyclic"]


@dataclass(frozen=True)
class Strategy:
    """How one federated run turns site updates into the next global model.

    ``schedule="parallel"``: sampled sites train from the same global model and their
    deltas are averaged. ``schedule="cyclic"``: sampled sites train in turn, each from the
    previous site's model, and the round's delta is the chain's end minus its start.
    """

    name: str
    client: ClientRule
    server_optimizer: ServerOptimizer = field(default_factory=ServerOptimizer)
    weighting: Weighting = "samples"
    schedule: Schedule = "parallel"
    personal: Personalisation = field(default_factory=Personalisation)
    aggregator: str = "mean"  # or a robust rule from fedcare.algorithms.robust
    aggregator_params: dict[str, float] = field(default_factory=dict)
    upload: UploadPipeline = field(default_factory=UploadPipeline)  # clip / compress stages
    dp: DPSpec | None = None  # client-level differential privacy
    sample_dp: SampleDPSpec | None = None  # sample-level DP-SGD inside local training
    secure: SecureSpec | None = None  # secure aggregation or encryption of the uploads

    def robust_rule(self) -> RobustAggregator | None:
        """The robust aggregation rule, or None for the streaming weighted mean."""
        if self.aggregator == "mean":
            return None
        return build_robust_aggregator(self.aggregator, **self.aggregator_params)

    def init_state(self, params: FloatVector) -> ServerState:
        arrays = self.server_optimizer.init(params.size)
        arrays.update(self.client.init_server_arrays(params.size))
        return ServerState(round=0, params=params.astype(np.float32, copy=True), arrays=arrays)

    @property
    def needs_start_loss(self) -> bool:
        """Whether sites must report their loss at the global model before training."""
        return bool(getattr(self.client, "needs_start_loss", False))

    def local_spec(self, spec: TrainSpec) -> TrainSpec:
        return self.client.check_spec(spec)

    def objective(self, state: ServerState, site_state: SiteState) -> LocalObjective:
        return self.client.objective(state, site_state)

    def client_update(
        self, state: ServerState, site_state: SiteState, outcome: LocalOutcome, spec: TrainSpec
    ) -> tuple[SiteState, ClientUpdate]:
        new_site_state, delta, extras = self.client.finish(state, site_state, outcome, spec)
        if isinstance(self.client, OwnWeight):
            weight = self.client.own_weight(state, site_state, outcome, spec)
        else:
            weight = aggregation_weight(outcome.num_samples, self.weighting)
        update = ClientUpdate(
            delta=delta.astype(np.float32, copy=False),
            weight=weight,
            extras=extras,
            metrics={
                "train_loss": outcome.train_loss,
                "num_samples": float(outcome.num_samples),
                **outcome.metrics,
            },
        )
        return new_site_state, update

    def download_nbytes(self, state: ServerState) -> int:
        """Bytes each participant receives: the model plus the rule's broadcast arrays.

        Server-optimizer moments (``opt/…``) never leave the coordinator.
        """
        broadcast = sum(v.nbytes for k, v in state.arrays.items() if not k.startswith("opt/"))
        return int(state.params.nbytes + broadcast)

    def new_accumulator(self, state: ServerState) -> StreamingMean:
        return StreamingMean(state.params.size)

    def server_update(
        self, state: ServerState, aggregate: Aggregate, num_sites: int, *, spend: bool = False
    ) -> ServerState:
        """Apply the aggregated delta with the server optimizer and update rule arrays.

        ``spend=True``: the caller hands the aggregate over, and the new model is written
        over its delta (float32, the model's size), so the step allocates no model-sized
        array of its own; the aggregate must not be read afterwards. The values are the
        same bits either way.
        """
        # The rule's arrays first: a rule may read the delta, which a spent step overwrites.
        rule_arrays = self.client.update_server_arrays(state, aggregate, num_sites)
        moments = {k: v for k, v in state.arrays.items() if k.startswith("opt/")}
        into = aggregate.delta if spend else None
        params, new_moments = self.server_optimizer.step(
            state.params, aggregate.delta, moments, into=into
        )
        arrays = {k: v for k, v in state.arrays.items() if not k.startswith("opt/")}
        arrays.update(new_moments)
        arrays.update(rule_arrays)
        return ServerState(
            round=state.round + 1, params=params, arrays=arrays, scalars=dict(state.scalars)
        )


def chain_aggregate(start: FloatVector, end: FloatVector, count: int, weight: float) -> Aggregate:
    """The cyclic schedule's round result: the whole chain's delta, as one aggregate."""
    return Aggregate(
        delta=(end - start).astype(np.float32), extras={}, total_weight=weight, count=count
    )
