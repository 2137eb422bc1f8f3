"""Small helpers shared by the secagg tests: configs, deterministic randomness, vectors."""

from __future__ import annotations

import random

import numpy as np

from fedcare.secagg import FixedPointRing, SecAggClient, SecAggConfig, SecAggServer
from fedcare.secagg.field import RandomBytes
from fedcare.secagg.messages import ClientMessage, ServerMessage


def seeded_rng(seed: int) -> RandomBytes:
    """Deterministic stand-in for os.urandom, so failures reproduce."""
    return random.Random(seed).randbytes


def make_config(
    n: int,
    threshold: int,
    *,
    length: int = 16,
    degree: int | None = None,
    session: bytes = b"study-7/round-03",
) -> SecAggConfig:
    return SecAggConfig(
        session_id=session,
        client_ids=tuple(range(n)),
        vector_length=length,
        threshold=threshold,
        ring=FixedPointRing(clip=1.5, max_clients=n),
        degree=degree,
    )


def random_vectors(config: SecAggConfig, seed: int) -> dict[int, np.ndarray]:
    """Inputs in [-2, 2], so some entries are clipped to the ring's range."""
    gen = np.random.default_rng(seed)
    return {
        c: gen.uniform(-2, 2, config.vector_length).astype(np.float32) for c in config.client_ids
    }


def quantised_sum(
    config: SecAggConfig, vectors: dict[int, np.ndarray], ids: set[int]
) -> np.ndarray:
    total = np.zeros(config.vector_length, dtype=np.uint32)
    for c in ids:
        total += config.ring.encode(vectors[c])
    return total


class ManualRound:
    """Step clients and server by hand, keeping every message so tests can replay or forge."""

    def __init__(self, config: SecAggConfig, seed: int = 0) -> None:
        self.config = config
        self.vectors = random_vectors(config, seed)
        rng = seeded_rng(seed)
        self.clients = {c: SecAggClient(config, c, self.vectors[c], rng) for c in config.client_ids}
        self.server = SecAggServer(config)

    def advertise(self) -> list[ClientMessage]:
        return [m for c in self.clients.values() for m in c.start()]

    def to_server(self, messages: list[ClientMessage]) -> list[ServerMessage]:
        return [reply for m in messages for reply in self.server.handle(m)]

    def to_clients(self, messages: list[ServerMessage]) -> list[ClientMessage]:
        return [reply for m in messages for reply in self.clients[m.recipient].handle(m)]
