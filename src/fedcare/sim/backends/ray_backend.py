"""Chunks of sites as Ray tasks: the one module of fedcare that imports ray.

A round on Ray is the in-process round with its chunks elsewhere: the driver puts the
round's plan (the server state every chunk starts from) into Ray's object store once,
starts one task per chunk of sampled sites with those sites' states, and merges the tasks'
partial results (:class:`~fedcare.rounds.ChunkResult`: the chunk's partial aggregator,
site states, bytes and losses) in a binary tree of merge tasks, then into the round's own
aggregator; the engine's server step follows as in process. A task receives the run's
:class:`SimulationRecipe`, never a site's rows: the worker rebuilds the run from it,
loading the data where it executes, and keeps it in its process for the next chunk
(:func:`~fedcare.sim.backends.recipe.worker_simulation`).

The tree has a fixed shape (neighbours pairwise, in chunk order), so a run gives the same
model however the tasks are scheduled; it differs from the in-process run only by the
order of the float64 partial sums.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from fedcare.core.closing import Closing
from fedcare.core.errors import ConfigError
from fedcare.core.records import SiteState
from fedcare.privacy.accountant import PrivacyAccountant
from fedcare.rounds import ChunkResult, RoundPlan
from fedcare.rounds.aggregators import Aggregator
from fedcare.sim.backend import Chunk, RoundChunks
from fedcare.sim.backends.recipe import SimulationRecipe, worker_simulation

if TYPE_CHECKING:
    from fedcare.sim.engine import FederatedSimulation

# How long the driver tries a cluster's address before saying it is not there; Ray itself
# would keep retrying for minutes.
PROBE_TIMEOUT_S = 5.0


Accounts = dict[str, dict[str, Any]]  # site -> PrivacyAccountant.to_dict()


@dataclass
class _Ledgers:
    """The privacy state a chunk's sites charge, which the run keeps outside their site
    states: each site's local-DP accountant (``dp: {mode: local}``) and its DP-SGD
    accountant (``sample_dp``). Tasks return them charged; the driver keeps them."""

    local: Accounts
    sample: Accounts

    def merge(self, other: _Ledgers) -> _Ledgers:
        return _Ledgers({**self.local, **other.local}, {**self.sample, **other.sample})


@dataclass
class _ChunkOutcome:
    result: ChunkResult
    ledgers: _Ledgers


def _lend(simulation: FederatedSimulation, names: Sequence[str]) -> _Ledgers:
    """The sites' accountants as the driver holds them."""
    local = {} if simulation.private is None else simulation.private.site_accountants
    sample = {} if simulation.sample_private is None else simulation.sample_private.accountants
    return _Ledgers(
        {n: local[n].to_dict() for n in names if n in local},
        {n: sample[n].to_dict() for n in names if n in sample},
    )


def _take_back(simulation: FederatedSimulation, ledgers: _Ledgers) -> None:
    if simulation.private is not None:
        for name, state in ledgers.local.items():
            simulation.private.site_accountants[name] = PrivacyAccountant.from_dict(state)
    if simulation.sample_private is not None:
        for name, state in ledgers.sample.items():
            simulation.sample_private.accountants[name] = PrivacyAccountant.from_dict(state)


def _run_chunk(
    recipe: SimulationRecipe,
    plan: RoundPlan,
    privacy: dict[str, Any] | None,
    site_states: Mapping[str, SiteState],
    chunk: Chunk,
    blank: Aggregator,
    ledgers: _Ledgers,
) -> _ChunkOutcome:
    """One chunk on a worker, into a fresh partial aggregator of the round's kind.

    ``blank.empty()``: what Ray hands a task is read-only (zero-copy from its object
    store), so the task adds into new arrays of its own. ``privacy`` is the driver's
    client-level DP state at this round (the clip norm adapts between rounds).
    """
    simulation = worker_simulation(recipe)
    names = [simulation.names[int(k)] for k in chunk]
    if simulation.private is not None and privacy is not None:
        simulation.private.restore(privacy)
    _take_back(simulation, ledgers)
    result = simulation.run_chunk(plan, site_states, chunk, into=ChunkResult(blank.empty()))
    return _ChunkOutcome(result, _lend(simulation, names))


def _merge(left: _ChunkOutcome, right: _ChunkOutcome) -> _ChunkOutcome:
    """``left`` then ``right`` folded into a new result (arrays from Ray are read-only)."""
    fresh = ChunkResult(left.result.aggregator.empty())
    return _ChunkOutcome(
        fresh.merge(left.result).merge(right.result), left.ledgers.merge(right.ledgers)
    )


_chunk_task = ray.remote(_run_chunk)
_merge_task = ray.remote(_merge)


def _probe(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (HOST:PORT only)."""
    if address == "auto" or "://" in address:
        return  # Ray resolves these itself
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"--address {address!r}: expected the HOST:PORT that `ray start --head` printed "
            "(or 'auto' for the cluster this machine belongs to)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc}); start one with "
            "`ray start --head` and pass the address it prints, or leave --address out to "
            "start a local Ray instance"
        ) from exc


class RayBackend(Closing):
    """A connection to a Ray cluster that runs simulations' chunks of sites.

    With ``address`` it joins that existing cluster; without, it reuses the Ray instance
    this process already has, or starts a local one (``num_cpus``: all cores by default)
    and shuts it down again on :meth:`close`. It never shuts down a cluster it joined.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        self.address = address
        self.started = False
        if address is not None:
            _probe(address)
        if ray.is_initialized():
            return
        if address is not None:
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError) as exc:
                raise ConfigError(
                    f"--address {address}: cannot join the Ray cluster: {exc}"
                ) from exc
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            self.started = True

    def for_run(self, recipe: SimulationRecipe) -> RayRun:
        """This backend bound to one run: what the run's simulation maps its chunks with."""
        return RayRun(recipe)

    def close(self) -> None:
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


@dataclass(frozen=True)
class RayRun:
    """The simulation backend (``sim.backend.Backend``) of one run on Ray: its chunks go
    to workers that rebuild ``recipe``."""

    recipe: SimulationRecipe

    def map_chunks(self, work: RoundChunks) -> ChunkResult:
        """Every chunk as a Ray task, the results merged in a tree and then into ``start``."""
        if not work.chunks:
            return work.start
        simulation = work.simulation
        recipe, shared = ray.put(self.recipe), ray.put(work.plan)
        private = simulation.private
        privacy = ray.put(None if private is None else private.to_dict())
        blank = ray.put(work.start.aggregator.empty())
        refs = []
        for chunk in work.chunks:
            names = [simulation.names[int(k)] for k in chunk]
            states = {n: work.site_states[n] for n in names}
            ledgers = _lend(simulation, names)
            refs.append(_chunk_task.remote(recipe, shared, privacy, states, chunk, blank, ledgers))
        merged: _ChunkOutcome = ray.get(tree_merge(refs))
        _take_back(simulation, merged.ledgers)
        return work.start.merge(merged.result)


def tree_merge(refs: Sequence[Any]) -> Any:
    """One reference to the merge of ``refs``: neighbours pairwise, level by level.

    Each merge is a Ray task on two earlier results, so merges run where the partial
    results are and in parallel, and the driver receives one result; the pairing depends
    only on the number of chunks.
    """
    level = list(refs)
    while len(level) > 1:
        paired = [_merge_task.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
