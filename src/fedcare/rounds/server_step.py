"""The coordinator's half of a round: the run's server state after the round's aggregate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.mocha import Array
from fedcare.algorithms.strategy import Strategy
from fedcare.core.records import ServerState
from fedcare.core.vectors import FloatVector


def round_context(strategy: Strategy, state: ServerState, num_sites: int) -> Any:
    """What the coordinator fixes for this round's personal pass (None without one)."""
    personal = strategy.personal.personal_pass
    return None if personal is None else personal.context(state, num_sites)


def kept_arrays(strategy: Strategy, state: ServerState, context: Any) -> frozenset[str]:
    """The server arrays that never leave the coordinator: the server optimizer's moments
    (``opt/…``) and what a collecting personal pass keeps (every site's model under MOCHA;
    each site receives only its own, in its site context)."""
    kept = {k for k in state.arrays if k.startswith("opt/")}
    personal = strategy.personal.personal_pass
    if personal is not None and personal.collects:
        kept.update(personal.server_arrays(state, context, {}))
    return frozenset(kept)


def broadcast_arrays(
    strategy: Strategy, state: ServerState, context: Any
) -> dict[str, FloatVector]:
    """The server arrays every site asked to train receives (SCAFFOLD's control variate);
    ``context`` is the round's :func:`round_context`."""
    kept = kept_arrays(strategy, state, context)
    return {k: v for k, v in state.arrays.items() if k not in kept}


def site_contexts(
    strategy: Strategy, context: Any, sites: Iterable[int]
) -> dict[int, dict[str, Array]]:
    """What the round's personal pass sends each site, by site index (its own model and
    objective under MOCHA; nothing under Ditto, whose pass needs only the global model)."""
    personal = strategy.personal.personal_pass
    if personal is None:
        return {site: {} for site in sites}
    return {site: personal.site_context(context, site) for site in sites}


def server_step(
    strategy: Strategy,
    state: ServerState,
    aggregate: Aggregate,
    num_sites: int,
    *,
    context: Any = None,
    collected: Mapping[int, FloatVector] | None = None,
    spend: bool = False,
) -> ServerState:
    """A new server state: the server optimizer's step with the aggregate, the client
    rule's arrays, and the personal pass's arrays from the models it ``collected`` (MOCHA
    keeps every site's model). ``state`` is left as it was; with ``spend=True`` the
    aggregate is not (its delta's memory becomes the new model: a coordinator that folded
    the round's mean for this step alone saves one model-sized array at its peak)."""
    new_state = strategy.server_update(state, aggregate, num_sites, spend=spend)
    personal = strategy.personal.personal_pass
    if personal is None or not personal.collects:
        return new_state
    arrays = personal.server_arrays(state, context, collected or {})
    return replace(new_state, arrays={**new_state.arrays, **arrays})
