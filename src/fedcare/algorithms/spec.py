"""What an algorithm declares about itself: one ``AlgorithmSpec`` per strategy name.

Each algorithm module ends with its ``SPECS``; the registry
(:mod:`fedcare.algorithms.plugin`) collects them, and those of third-party packages
through the ``fedcare.algorithms`` entry point group. ``build_strategy`` reads only specs:
which parameters a name takes and their defaults, which server optimizer and schedule it
runs with, what stays at the sites, and which privacy settings it cannot honour (and why).
Variants are specs, not subclasses: FedAdam is FedAvg's client rule with the Adam server
optimizer at lr 0.01.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

from fedcare.algorithms.client_rule import ClientRule
from fedcare.algorithms.server_optim import ServerOptimizerName

if TYPE_CHECKING:
    from fedcare.algorithms.personal import PersonalKind
    from fedcare.algorithms.strategy import Schedule

Hook = Literal["start_loss", "personal_pass", "own_weight", "extras"]
"""What a round must do for an algorithm beyond train-and-upload-a-delta:

* ``start_loss``: each site reports its loss at the global model before training;
* ``personal_pass``: each site trains a personal model in a second pass;
* ``own_weight``: each site sets its own aggregation weight (instead of n_k or 1);
* ``extras``: uploads carry arrays beside the delta (e.g. control variates).
"""
HOOKS: tuple[str, ...] = get_args(Hook)
SCHEDULES: tuple[str, ...] = ("parallel", "cyclic")
PERSONAL_KINDS: tuple[str, ...] = ("fedper", "fedbn", "ditto", "mocha")
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizerName)


class CommonParams(BaseModel):
    """Parameters every strategy takes: server optimizer, weighting, personal fine-tuning,
    aggregation, upload stages and privacy (the last four parsed by their own modules).

    ``server_lr`` and ``server_momentum`` default to the algorithm's spec.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    weighting: str = "samples"
    finetune_epochs: int = 0
    aggregator: str = "mean"
    aggregator_params: dict[str, Any] = Field(default_factory=dict)
    upload: Any = None
    dp: Any = None
    sample_dp: Any = None
    secure: Any = None


COMMON_PARAMS: frozenset[str] = frozenset(CommonParams.model_fields)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class NoParams(BaseModel):
    """The parameter model of an algorithm with no parameters of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=BaseModel)


def _no_personal_params(params: BaseModel) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class AlgorithmSpec(Generic[P]):
    """One strategy name and everything ``build_strategy`` needs to compose it.

    ``params`` is a pydantic model whose fields (all with defaults) are the algorithm's own
    parameters; ``client`` builds the client rule from a validated instance of it.
    ``not_private`` / ``not_sample_private`` say why client-level DP and secure summation,
    or sample-level DP-SGD, cannot cover what this algorithm's sites send (None: they can).
    """

    name: str
    client: Callable[[P], ClientRule]
    params: type[P] = NoParams  # type: ignore[assignment]
    server_optimizer: ServerOptimizerName = "sgd"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    schedule: Schedule = "parallel"
    personal: PersonalKind | None = None
    personal_params: Callable[[P], Mapping[str, float]] = _no_personal_params
    hooks: frozenset[Hook] = field(default_factory=frozenset)
    not_private: str | None = None
    not_sample_private: str | None = None

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"algorithm spec '{self.name}': {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        found: list[str] = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            found.append(
                f"name must be lowercase letters, digits and '_', starting with a letter, "
                f"found {self.name!r}"
            )
        if not callable(self.client):
            found.append(
                f"client must be a callable building the client rule, found {self.client!r}"
            )
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            found.append(f"params must be a pydantic model class, found {self.params!r}")
        else:
            fields = self.params.model_fields
            required = sorted(k for k, f in fields.items() if f.is_required())
            if required:
                found.append(f"every parameter needs a default, found none for {required}")
            shadowed = sorted(set(fields) & COMMON_PARAMS)
            if shadowed:
                found.append(f"parameter(s) {shadowed} are common to every strategy")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            found.append(
                f"server_optimizer must be one of {SERVER_OPTIMIZERS}, found {self.server_optimizer!r}"
            )
        if not self.server_lr > 0:
            found.append(f"server_lr must be > 0, found {self.server_lr!r}")
        if not 0 <= self.server_momentum < 1:
            found.append(f"server_momentum must be in [0, 1), found {self.server_momentum!r}")
        if self.schedule not in SCHEDULES:
            found.append(f"schedule must be one of {SCHEDULES}, found {self.schedule!r}")
        if self.personal is not None and self.personal not in PERSONAL_KINDS:
            found.append(
                f"personal must be one of {PERSONAL_KINDS} or None, found {self.personal!r}"
            )
        unknown_hooks = sorted(set(self.hooks) - set(HOOKS))
        if unknown_hooks:
            found.append(f"unknown hook(s) {unknown_hooks}; known hooks: {list(HOOKS)}")
        return found

    @property
    def param_names(self) -> frozenset[str]:
        return frozenset(self.params.model_fields)

    @property
    def passes_models(self) -> bool:
        """Sites hand the model on (cyclic) instead of uploading updates to aggregate."""
        return self.schedule == "cyclic"

    @property
    def refuses_robust(self) -> bool:
        """Robust rules ignore weights and need updates from one model: sites that set their
        own weight, or a cyclic chain of models, cannot be aggregated robustly."""
        return "own_weight" in self.hooks or self.passes_models

    def parse_params(self, given: Mapping[str, Any]) -> P:
        """This algorithm's own parameters from ``given`` (the rest are common ones)."""
        return self.params.model_validate({k: v for k, v in given.items() if k in self.param_names})
