"""The coordinator's half of a round: the run's server state after the round's aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.strategy import Strategy
from fedcare.core.records import ServerState
from fedcare.core.vectors import FloatVector


def round_context(strategy: Strategy, state: ServerState, num_sites: int) -> Any:
    """What the coordinator fixes for this round's personal pass (None without one)."""
    personal = strategy.personal.personal_pass
    return None if personal is None else personal.context(state, num_sites)


def server_step(
    strategy: Strategy,
    state: ServerState,
    aggregate: Aggregate,
    num_sites: int,
    *,
    context: Any = None,
    collected: Mapping[int, FloatVector] | None = None,
) -> ServerState:
    """A new server state: the server optimizer's step with the aggregate, the client
    rule's arrays, and the personal pass's arrays from the models it ``collected`` (MOCHA
    keeps every site's model). ``state`` is left as it was."""
    new_state = strategy.server_update(state, aggregate, num_sites)
    personal = strategy.personal.personal_pass
    if personal is None or not personal.collects:
        return new_state
    arrays = personal.server_arrays(state, context, collected or {})
    return replace(new_state, arrays={**new_state.arrays, **arrays})
