"""The round core: one round for every driver (simulator, deployment, other backends).

Pure (numpy only: no torch, no network, no clock). A driver runs a round as

1. ``plan = RoundPlan(state, sampled, round_context(strategy, state, num_sites))``;
2. per site: ``training_task`` -> the driver trains it -> ``finish_training`` -> the
   upload is added to the round's aggregator (``new_aggregator``) -> ``personal_task``
   (if the strategy has a personal pass) -> the driver trains it -> ``keep_personal``;
3. ``server_step(strategy, state, aggregator.result().aggregate, ...)`` -> the new
   server state, folded into the next immutable :class:`RunState`.

Chunks of sites may run anywhere: their :class:`ChunkResult` values merge.
"""

from fedcare.rounds.aggregators import (
    Aggregator,
    MeanAggregator,
    PrivateAggregator,
    RobustAggregator,
    RoundAggregate,
    SecureSumAggregator,
    UpdateSink,
)
from fedcare.rounds.chunk import ChunkResult, RoundPlan
from fedcare.rounds.compose import AggregationServices, new_aggregator
from fedcare.rounds.server_step import (
    broadcast_arrays,
    kept_arrays,
    round_context,
    server_step,
    site_contexts,
)
from fedcare.rounds.site_step import (
    SiteRound,
    SiteUpload,
    TrainingTask,
    finish_training,
    keep_personal,
    personal_task,
    site_context_layout,
    site_model,
    training_task,
)
from fedcare.rounds.state import RunState

__all__ = [
    "AggregationServices",
    "Aggregator",
    "ChunkResult",
    "MeanAggregator",
    "PrivateAggregator",
    "RobustAggregator",
    "RoundAggregate",
    "RoundPlan",
    "RunState",
    "SecureSumAggregator",
    "SiteRound",
    "SiteUpload",
    "TrainingTask",
    "UpdateSink",
    "broadcast_arrays",
    "finish_training",
    "keep_personal",
    "kept_arrays",
    "new_aggregator",
    "personal_task",
    "round_context",
    "server_step",
    "site_context_layout",
    "site_contexts",
    "site_model",
    "training_task",
]
