"""The site's half of a round, as pure steps the simulator and the deployed site share.

A site's round is: train the task :func:`training_task` describes (the driver runs it,
batched or not), turn the outcome into an upload with :func:`finish_training` (the
strategy's client rule, DP at the site, the upload stages, what a personalised strategy
keeps local), then train the strategy's personal pass, if any, with
:func:`personal_task` and keep its model with :func:`keep_personal`. Drivers never test
for an algorithm: what differs between algorithms is behind the strategy's hooks.

Every random draw is the driver's (it passes the generators), so the simulator keys them
by (run seed, round, site) and a deployed site may use its own secure randomness for DP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedcare.algorithms.mocha import Array
from fedcare.algorithms.personal import (
    PERSONAL_MODEL,
    BoolMask,
    PersonalPass,
    keep_local,
    personal_model,
    site_start,
)
from fedcare.algorithms.strategy import Strategy
from fedcare.core.records import (
    ClientUpdate,
    LocalObjective,
    LocalOutcome,
    ServerState,
    SiteState,
    TrainSpec,
)
from fedcare.core.vectors import FloatVector
from fedcare.transforms.pipeline import Encoded

Purpose = Literal["batches", "misc"]
"""Seed-stream purpose of a task's batch order: the round's training, or a personal pass."""

VectorMap = Callable[[FloatVector], FloatVector]


@dataclass(frozen=True)
class SiteRound:
    """What one site knows of the round it trains.

    ``received``: the model and broadcast arrays it received (its ``round`` is the number
    of rounds done); ``spec``: the local training spec (the strategy's ``local_spec``);
    ``cohort``: how many sites the round asked; ``mask``: the entries a personalised
    strategy keeps at the site (FedPer, FedBN), or None.
    """

    strategy: Strategy
    spec: TrainSpec
    received: ServerState
    cohort: int
    mask: BoolMask | None = None

    @property
    def round_index(self) -> int:
        """The 1-based index of the round being trained (keys the round's random draws)."""
        return self.received.round + 1


@dataclass(frozen=True)
class TrainingTask:
    """One local training a driver runs for a site: from ``start``, minimising the data
    loss plus ``objective``, on the batch order of ``purpose``; ``start_loss``: also report
    the loss at ``start`` (q-FedAvg)."""

    start: FloatVector
    objective: LocalObjective
    purpose: Purpose = "batches"
    start_loss: bool = False


@dataclass(frozen=True)
class SiteUpload:
    """What a site sends: ``update`` as the coordinator decodes it, ``sent_bytes`` on the
    wire, and ``encoded`` (the upload stages' output, for a driver that sends it as is;
    None without stages or when a mask keeps entries local)."""

    update: ClientUpdate
    sent_bytes: int
    encoded: Encoded | None = None


def training_task(plan: SiteRound, site_state: SiteState) -> TrainingTask:
    """The round's local training: from the received model (with the site's own local
    entries under FedPer/FedBN), under the client rule's objective."""
    received = plan.received
    start = (
        received.params if plan.mask is None else site_start(received.params, site_state, plan.mask)
    )
    return TrainingTask(
        start=start,
        objective=plan.strategy.objective(received, site_state),
        start_loss=plan.strategy.needs_start_loss,
    )


def finish_training(
    plan: SiteRound,
    site_state: SiteState,
    outcome: LocalOutcome,
    *,
    compress_rng: np.random.Generator | None = None,
    privatise: VectorMap | None = None,
    tamper: VectorMap | None = None,
) -> tuple[SiteState, SiteUpload]:
    """The site's new state and upload after training ``outcome``.

    In order: the client rule's update; ``tamper`` (the simulator's attacks); ``privatise``
    (local or distributed DP at the site) over the shared entries only; the upload stages
    (``compress_rng`` draws their randomness: required when the strategy has stages); the
    local entries kept at the site. Extras
    travel uncompressed and are counted in ``sent_bytes``.
    """
    strategy, mask = plan.strategy, plan.mask
    site_state, update = strategy.client_update(plan.received, site_state, outcome, plan.spec)
    delta = update.delta
    if tamper is not None:
        delta = tamper(delta)
    if privatise is not None:
        if mask is not None:  # clip and noise what is shared, nothing else
            delta = np.where(mask, np.float32(0), delta)
        delta = privatise(delta)
    site_state, delta, sent, encoded = _upload(strategy, delta, site_state, mask, compress_rng)
    update.delta = delta
    sent += update.nbytes() - delta.nbytes
    if mask is not None:
        site_state = keep_local(site_state, outcome.params, mask)
    return site_state, SiteUpload(update, sent, encoded)


def _upload(
    strategy: Strategy,
    delta: FloatVector,
    site_state: SiteState,
    mask: BoolMask | None,
    rng: np.random.Generator | None,
) -> tuple[SiteState, FloatVector, int, Encoded | None]:
    """Send one update through the strategy's upload stages.

    Returns the site's new state (top-k keeps its residual there), the update as the
    coordinator decodes it, the bytes it took and the encoding. Entries a personalised
    strategy keeps local are neither encoded nor counted; they arrive as zeros.
    """
    pipeline = strategy.upload
    shared = delta if mask is None else delta[~mask]
    encoded: Encoded | None = None
    if not pipeline.stages:
        nbytes, decoded = int(shared.nbytes), shared
    else:
        if rng is None:
            stages = ", ".join(stage.kind for stage in pipeline.stages)
            raise ValueError(f"the upload stages ({stages}) need a random generator")
        encoded, site_state = pipeline.encode(shared, site_state, rng)
        nbytes, decoded = encoded.nbytes, pipeline.decode(encoded)
    if mask is None:
        return site_state, decoded, nbytes, encoded
    full = np.zeros_like(delta)
    full[~mask] = decoded
    return site_state, full, nbytes, None


def personal_task(
    personal: PersonalPass,
    site_context: Mapping[str, Array],
    received: ServerState,
    site_state: SiteState,
) -> TrainingTask:
    """The strategy's personal pass at a site (Ditto's v_k, MOCHA's w_t), from the
    ``site_context`` the coordinator sent it (``personal.site_context(context, site)``),
    trained after the round's update on the site's "misc" batch order."""
    start, objective = personal.task(site_context, received.params, site_state)
    return TrainingTask(start=start, objective=objective, purpose="misc")


def site_context_layout(strategy: Strategy, num_sites: int) -> dict[str, int | None]:
    """The entries of the site context the strategy's personal pass sends a site, each
    with its size (None: the model's size), so a site can check what it receives. Found by
    a dry run on a 3-value model, the way the coordinator learns the client rule's extras."""
    personal = strategy.personal.personal_pass
    if personal is None:
        return {}
    probe = strategy.init_state(np.zeros(_PROBE, dtype=np.float32))
    context = personal.site_context(personal.context(probe, num_sites), 0)
    return {k: None if v.size == _PROBE else int(v.size) for k, v in context.items()}


_PROBE = 3


def keep_personal(site_state: SiteState, params: FloatVector) -> SiteState:
    """The site's state with its newly trained personal model."""
    return {**site_state, PERSONAL_MODEL: params.copy()}


def site_model(
    strategy: Strategy, global_params: FloatVector, site_state: SiteState, mask: BoolMask | None
) -> FloatVector:
    """The model a site uses for its own patients: the global one, or its personal one."""
    return personal_model(global_params, site_state, strategy.personal, mask)
