"""Plain records that cross the boundary between the server and client halves.

The same records are used by the in-process simulator (arrays passed by reference) and
by the network runtime (converted in one serde module), so an algorithm never knows
which runtime drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedcare.core.vectors import FloatVector

SiteState = dict[str, FloatVector]
"""What an algorithm keeps at one site between rounds (SCAFFOLD's control variate,
a personal model). It never leaves the site unless the algorithm uploads part of it."""

OptimizerName = Literal["sgd", "adam"]


@dataclass(frozen=True)
class TrainSpec:
    """Local training hyper-parameters, identical for every site in a round.

    Set ``epochs`` or ``steps`` (neither means one epoch). ``batch_size=None`` means full batch.
    """

    optimizer: OptimizerName = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = 32

    def __post_init__(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("TrainSpec takes epochs or steps, not both")
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 1)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"TrainSpec.epochs must be >= 1, found {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"TrainSpec.steps must be >= 1, found {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"TrainSpec.batch_size must be >= 1, found {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"TrainSpec.lr must be > 0, found {self.lr}")

    def steps_for(self, num_samples: int) -> int:
        """Number of optimiser steps a site with ``num_samples`` rows takes."""
        if self.steps is not None:
            return self.steps
        batch = num_samples if self.batch_size is None else self.batch_size
        per_epoch = -(-num_samples // max(batch, 1)) if num_samples else 0
        return (self.epochs or 0) * per_epoch


@dataclass(frozen=True)
class LocalObjective:
    """What local training minimises beyond the data loss.

    gradient = grad(data loss) + prox_mu * (w - anchor) + correction
    (FedProx and Ditto use the proximal term, SCAFFOLD the correction.)
    """

    prox_mu: float = 0.0
    anchor: FloatVector | None = None
    correction: FloatVector | None = None

    @property
    def is_plain(self) -> bool:
        return self.prox_mu == 0.0 and self.correction is None


@dataclass
class LocalOutcome:
    """Result of local training at one site, before the algorithm's client half sees it."""

    params: FloatVector
    num_samples: int
    num_steps: int
    train_loss: float
    start_loss: float | None = None  # loss of the starting model on the site's rows (q-FedAvg)
    # Numbers the site reports beside its update (sample-level DP-SGD: its epsilon so far).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ClientUpdate:
    """What a site uploads: a delta (local - start), its weight and algorithm extras."""

    delta: FloatVector
    weight: float
    extras: dict[str, FloatVector] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        return int(self.delta.nbytes + sum(v.nbytes for v in self.extras.values()))


@dataclass
class ServerState:
    """All algorithm state on the coordinator: one explicit, serialisable value.

    Checkpoint = this value. ``arrays`` holds optimiser moments and algorithm extras under
    slash-separated names (``opt/m``, ``scaffold/control``); ``scalars`` small numbers.
    """

    round: int
    params: FloatVector
    arrays: dict[str, FloatVector] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)

    def copy(self) -> ServerState:
        return ServerState(
            round=self.round,
            params=self.params.copy(),
            arrays={k: v.copy() for k, v in self.arrays.items()},
            scalars=dict(self.scalars),
        )

    def to_tensors(self) -> dict[str, FloatVector]:
        out = {"params": self.params}
        out.update({f"arrays/{k}": v for k, v in self.arrays.items()})
        return out

    def metadata(self) -> dict[str, str]:
        meta = {"round": str(self.round)}
        meta.update({f"scalar/{k}": repr(float(v)) for k, v in self.scalars.items()})
        return meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, FloatVector], metadata: dict[str, str]) -> ServerState:
        arrays = {
            k.removeprefix("arrays/"): np.ascontiguousarray(v, dtype=np.float32)
            for k, v in tensors.items()
            if k.startswith("arrays/")
        }
        scalars = {
            k.removeprefix("scalar/"): float(v)
            for k, v in metadata.items()
            if k.startswith("scalar/")
        }
        return cls(
            round=int(metadata["round"]),
            params=np.ascontiguousarray(tensors["params"], dtype=np.float32),
            arrays=arrays,
            scalars=scalars,
        )
