"""Run n clients and the server through one secure aggregation, in process.

Dropouts follow a schedule ``{stage: client ids}``: a client listed under a stage sends
nothing from that stage on (its earlier messages were delivered). Stages close when every
live client has answered or, as a deadline would, once the live ones are done. Timings
are wall-clock seconds per stage: the clients' work summed and at its slowest client
(the critical path when sites run in parallel), and the server's work.

With ``late_inputs`` the clients start without their vectors, as sites that are still
training would, and get them once their masks are expanded: the stages' timings then
hold the input-independent ("offline") work only, and ``online`` each client's last step
(quantising its vector and adding the mask).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field

import numpy.typing as npt

from fedcare.core.errors import ConfigError
from fedcare.secagg.client import SecAggClient
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.crypto import system_random
from fedcare.secagg.field import RandomBytes
from fedcare.secagg.messages import ClientMessage, ServerMessage, Stage
from fedcare.secagg.server import AggregateResult, SecAggServer, ServerState


@dataclass(frozen=True)
class StageTiming:
    clients_total: float
    clients_max: float
    server: float
    per_client: dict[int, float] = field(default_factory=dict)  # seconds of each live client


@dataclass(frozen=True, eq=False)
class SimulationOutcome:
    result: AggregateResult
    timings: dict[Stage, StageTiming] = field(default_factory=dict)
    online: dict[int, float] = field(default_factory=dict)  # late_inputs: seconds per client

    @property
    def critical_path(self) -> float:
        """Seconds if every site computed in parallel, one stage after another."""
        staged = sum(t.clients_max + t.server for t in self.timings.values())
        return staged + max(self.online.values(), default=0.0)

    @property
    def sequential(self) -> float:
        """Seconds of all computation run one after another, as in this process."""
        staged = sum(t.clients_total + t.server for t in self.timings.values())
        return staged + sum(self.online.values())

    @property
    def offline_path(self) -> float:
        """With late_inputs: the critical path of the work before any vector is needed.

        The first two stages and the sites' mask expansion, which sites may run while
        they train.
        """
        t = self.timings
        first = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS)
        return (
            sum(t[s].clients_max + t[s].server for s in first) + t[Stage.MASKED_INPUT].clients_max
        )

    @property
    def online_path(self) -> float:
        """With late_inputs: the critical path from the slowest vector to the sum."""
        t = self.timings
        return (
            max(self.online.values(), default=0.0)
            + t[Stage.MASKED_INPUT].server
            + t[Stage.UNMASKING].clients_max
            + t[Stage.UNMASKING].server
        )


def simulate(
    config: SecAggConfig,
    vectors: Mapping[int, npt.ArrayLike],
    dropouts: Mapping[Stage, Set[int]] | None = None,
    rng: RandomBytes = system_random,
    server_workers: int | None = None,
    late_inputs: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> SimulationOutcome:
    """Aggregate ``vectors`` securely; raises ProtocolError if too many clients drop.

    ``server_workers``: threads the server expands masks on (see :class:`SecAggServer`).
    ``late_inputs``: clients get their vectors only once their masks are ready (above).
    ``clock``: what timings are read from (e.g. ``time.process_time`` for CPU seconds,
    which a busy machine disturbs less than wall-clock time).
    """
    if set(vectors) != set(config.client_ids):
        raise ConfigError("simulate needs exactly one vector per configured client")
    drops = dropouts or {}
    clients: dict[int, SecAggClient] = {}
    setup: dict[int, float] = {}
    for c in config.client_ids:  # quantising and key generation count towards stage 0
        start = clock()
        clients[c] = SecAggClient(config, c, None if late_inputs else vectors[c], rng)
        setup[c] = clock() - start
    server = SecAggServer(config, server_workers)
    timings: dict[Stage, StageTiming] = {}
    online: dict[int, float] = {}
    alive = set(config.client_ids)
    inbox: dict[int, list[ServerMessage]] = {c: [] for c in alive}
    for stage in Stage:
        alive -= set(drops.get(stage, ()))
        client_times: dict[int, float] = {}
        outgoing: list[ClientMessage] = []
        for c in sorted(alive):
            start = clock()
            if stage is Stage.ADVERTISE_KEYS:
                outgoing += clients[c].start()
            else:
                for message in inbox[c]:
                    outgoing += clients[c].handle(message)
            client_times[c] = clock() - start + setup.pop(c, 0.0)
            if late_inputs and stage is Stage.MASKED_INPUT:
                start = clock()
                outgoing += clients[c].provide_input(vectors[c])
                online[c] = clock() - start
        start = clock()
        replies: list[ServerMessage] = []
        for out in outgoing:
            replies += server.handle(out)
        if server.state is _COLLECTING[stage]:  # someone dropped: the deadline closes it
            replies += server.close_stage()
        server_time = clock() - start
        inbox = {c: [] for c in alive}
        for reply in replies:
            if reply.recipient in inbox:  # messages to dropped clients are lost
                inbox[reply.recipient].append(reply)
        spent = client_times.values()
        timings[stage] = StageTiming(sum(spent), max(spent, default=0.0), server_time, client_times)
    return SimulationOutcome(server.result, timings, online)


_COLLECTING = {
    Stage.ADVERTISE_KEYS: ServerState.COLLECT_KEYS,
    Stage.SHARE_KEYS: ServerState.COLLECT_SHARES,
    Stage.MASKED_INPUT: ServerState.COLLECT_MASKED,
    Stage.UNMASKING: ServerState.COLLECT_UNMASK,
}
