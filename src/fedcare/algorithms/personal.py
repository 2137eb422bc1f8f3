"""Personalisation: what each site keeps for itself, as pure functions over flat vectors.

- FedPer (Arivazhagan et al. 2019): the last layer (the "head") stays at each site.
- FedBN (Li et al., ICLR 2021): normalisation layers stay at each site.
  Both are a boolean ``local`` mask over the flat vector: masked entries start from the
  site's own values, are never uploaded, and are stored back at the site.
- Ditto (Li et al., ICML 2021): every site also trains a personal model v_k on
  its loss + (lambda/2) ||v_k - w||^2 towards the current global model w.
- MOCHA (Smith et al., NeurIPS 2017): personal linear models tied by a learned task
  relationship (see :mod:`fedcare.algorithms.mocha`).
- Fine-tuning: after federation, each site trains the final model a little on its own data.
The personal state lives in the site's :data:`~fedcare.core.records.SiteState` (kept at
the site, checkpointed with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.algorithms.mocha import Array, MochaPass
from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, ServerState, SiteState
from fedcare.core.vectors import FloatVector

PersonalKind = Literal["fedper", "fedbn", "ditto", "mocha"]
LOCAL_VALUES = "personal/local_values"
PERSONAL_MODEL = "personal/model"
BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Personalisation:
    kind: PersonalKind | None = None
    ditto_lambda: float = 0.1
    finetune_epochs: int = 0
    mocha_lambda1: float = 0.1
    mocha_lambda2: float = 0.01

    def __post_init__(self) -> None:
        if self.ditto_lambda < 0:
            raise ConfigError(f"ditto_lambda must be >= 0, found {self.ditto_lambda}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, found {self.finetune_epochs}")

    @property
    def mask_kind(self) -> str | None:
        """Which tensors stay local: 'head' (FedPer), 'norm' (FedBN) or none."""
        return {"fedper": "head", "fedbn": "norm"}.get(self.kind or "")

    @property
    def active(self) -> bool:
        return self.kind is not None or self.finetune_epochs > 0

    @property
    def personal_pass(self) -> PersonalPass | None:
        """The second local training each round (Ditto, MOCHA), or None."""
        if self.kind == "ditto":
            return DittoPass(self.ditto_lambda)
        if self.kind == "mocha":
            return MochaPass(self.mocha_lambda1, self.mocha_lambda2)
        return None


class PersonalPass(Protocol):
    """A second local training each round, of a model that stays at the site.

    The round core calls these hooks; the driver only trains what they describe, on the
    site's "misc" batch order. The coordinator computes :meth:`context` once per round and
    sends each site its :meth:`site_context` (plain arrays, so it can travel); the site
    builds its :meth:`task` from that, the global model and its own state. A pass that
    ``collects`` has each site report its trained model, and :meth:`server_arrays` folds
    them into the server state.
    """

    @property
    def collects(self) -> bool: ...

    def context(self, state: ServerState, num_sites: int) -> Any:
        """What the coordinator fixes for this round's pass (shared by every site)."""
        ...

    def site_context(self, context: Any, site: int) -> dict[str, Array]:
        """The part of ``context`` site ``site`` needs (sent to it with the round)."""
        ...

    def task(
        self, site_context: Mapping[str, Array], global_params: FloatVector, site_state: SiteState
    ) -> tuple[FloatVector, LocalObjective]:
        """The site's start and objective for the pass."""
        ...

    def server_arrays(
        self, state: ServerState, context: Any, trained: Mapping[int, FloatVector]
    ) -> dict[str, FloatVector]:
        """Server arrays after the round, given the collected models (``collects`` only)."""
        ...


@dataclass(frozen=True)
class DittoPass:
    """Ditto: the personal model v_k trains on loss + (lambda/2)||v_k - w||^2 from itself."""

    lam: float
    collects: bool = False

    def context(self, state: ServerState, num_sites: int) -> None:
        return None

    def site_context(self, context: Any, site: int) -> dict[str, Array]:
        return {}

    def task(
        self, site_context: Mapping[str, Array], global_params: FloatVector, site_state: SiteState
    ) -> tuple[FloatVector, LocalObjective]:
        return ditto_start(global_params, site_state), ditto_objective(global_params, self.lam)

    def server_arrays(
        self, state: ServerState, context: Any, trained: Mapping[int, FloatVector]
    ) -> dict[str, FloatVector]:
        return {}


def site_start(global_params: FloatVector, site_state: SiteState, mask: BoolMask) -> FloatVector:
    """The global model with the site's own local entries (once it has any)."""
    local = site_state.get(LOCAL_VALUES)
    if local is None:
        return global_params
    start = global_params.copy()
    start[mask] = local
    return start


def keep_local(site_state: SiteState, params: FloatVector, mask: BoolMask) -> SiteState:
    new_state = dict(site_state)
    new_state[LOCAL_VALUES] = params[mask].astype(np.float32)
    return new_state


def ditto_start(global_params: FloatVector, site_state: SiteState) -> FloatVector:
    return site_state.get(PERSONAL_MODEL, global_params)


def ditto_objective(global_params: FloatVector, lam: float) -> LocalObjective:
    return LocalObjective(prox_mu=lam, anchor=global_params)


def personal_model(
    global_params: FloatVector,
    site_state: SiteState,
    personal: Personalisation,
    mask: BoolMask | None,
) -> FloatVector:
    """The model a site uses for its own patients under ``personal``."""
    if personal.kind in ("ditto", "mocha"):
        return ditto_start(global_params, site_state)
    if mask is not None:
        return site_start(global_params, site_state, mask)
    return global_params
