"""Chunks of sites as Ray tasks: the one module of fedcare that imports ray.

The driver puts the round's shared input (the server state) into Ray's object store once,
starts one task per chunk of sampled sites and merges the tasks' partial results in a
binary tree of merge tasks, so neither the driver nor any worker ever holds more than two
partial results at a time. A task receives the run's :class:`SimulationRecipe`, never a
site's rows: the worker rebuilds the run from it, loading the data where it executes, and
keeps it in its process (``recipe.worker_simulation``) for the next chunk.

The tree has a fixed shape (pairs of neighbours, in chunk order), so a run gives the same
model however the tasks are scheduled.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import ray

from fedcare.core.errors import ConfigError
from fedcare.sim.backends.recipe import SimulationRecipe, worker_simulation

# How long the driver tries a cluster's address before saying it is not there; Ray itself
# would keep retrying for minutes.
PROBE_TIMEOUT_S = 5.0


class Mergeable(Protocol):
    """A chunk's partial result: ``merge`` folds another chunk's result into this one."""

    def merge(self, other: Any) -> None: ...


def _call_on_worker(recipe: SimulationRecipe, call: str, shared: Any, chunk: Any) -> Any:
    """Run ``call`` of the worker's copy of the run on one chunk of sites."""
    method: Callable[[Any, Any], Any] = getattr(worker_simulation(recipe), call)
    return method(shared, chunk)


def _merge(left: Mergeable, right: Mergeable) -> Mergeable:
    left.merge(right)  # partial results merge in place, as the round's aggregators do
    return left


_chunk_task = ray.remote(_call_on_worker)
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


class RayBackend:
    """A connection to a Ray cluster that runs a simulation's chunks of sites.

    With ``address`` it joins that existing cluster; without, it reuses the Ray instance
    this process already has, or starts a local one (``num_cpus``: all cores by default)
    and shuts it down again on :meth:`close`. It never shuts down a cluster it joined.
    """

    name = "ray"

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

    def map_chunks(
        self,
        recipe: SimulationRecipe,
        call: str,
        shared: Any,
        chunks: Sequence[Any],
    ) -> Any:
        """Run ``call(shared, chunk)`` of the recipe's run for every chunk, merged in a tree."""
        if not chunks:
            raise ValueError("map_chunks needs at least one chunk")
        shared_ref = ray.put(shared)
        recipe_ref = ray.put(recipe)
        refs = [_chunk_task.remote(recipe_ref, call, shared_ref, chunk) for chunk in chunks]
        return ray.get(tree_merge(refs))

    def for_run(self, recipe: SimulationRecipe) -> RayRun:
        """This backend bound to one run: what the run's simulation maps its chunks with."""
        return RayRun(self, recipe)

    def close(self) -> None:
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class RayRun:
    """The Ray backend for one run: chunks go to workers that rebuild ``recipe``."""

    backend: RayBackend
    recipe: SimulationRecipe

    def map_chunks(self, call: str, shared: Any, chunks: Sequence[Any]) -> Any:
        return self.backend.map_chunks(self.recipe, call, shared, chunks)


def tree_merge(refs: Sequence[Any]) -> Any:
    """One reference to the merge of ``refs``: neighbours pairwise, level by level.

    Each merge is a Ray task on two earlier results, so merges run where the partial
    results are and in parallel; the pairing depends only on the number of chunks.
    """
    level = list(refs)
    while len(level) > 1:
        paired = [_merge_task.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
