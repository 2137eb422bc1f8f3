"""A federated run described by its study settings, so a worker can rebuild it.

A Ray task does not receive a site's rows: it receives this recipe (names and parameters
of the dataset, model and strategy, the local training spec, the run's seed, ...) and
rebuilds the run where it executes, loading the data there. The driver builds its own
simulation from the same recipe (:meth:`SimulationRecipe.build`), so both sides construct
it the same way. A worker keeps what it built in a small per-process cache, keyed by the
recipe's digest: every chunk of every round of a run reuses one loaded dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from fedcare.algorithms.attacks import AttackSpec
from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.data.base import FederatedDataset
from fedcare.data.registry import load_dataset
from fedcare.ml.trainer import Mode
from fedcare.models.registry import build_model
from fedcare.runtime.sampling import Participation
from fedcare.sim.engine import FederatedSimulation
from fedcare.sim.evaluation import TestSets

# A worker serves one run at a time; two entries let consecutive runs overlap briefly
# without ever holding a study's whole history of datasets.
CACHE_SIZE: Final = 2


@dataclass(frozen=True)
class SimulationRecipe:
    """Everything :class:`FederatedSimulation` is built from, as plain settings."""

    dataset: str
    model: str
    strategy: str
    spec: TrainSpec
    rounds: int
    seed: int
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    model_params: Mapping[str, Any] = field(default_factory=dict)
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    strategy_label: str | None = None
    participation: Participation = field(default_factory=Participation)
    mode: Mode = "auto"
    site_chunk: int = 256
    attack: AttackSpec | None = None

    def digest(self) -> str:
        """SHA-256 of the recipe's canonical JSON: the worker cache's key."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def data_digest(self) -> str:
        """The key of the dataset alone (runs of several strategies share one dataset)."""
        text = json.dumps([self.dataset, dict(self.dataset_params)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def load_dataset(self) -> FederatedDataset:
        return load_dataset(self.dataset, **dict(self.dataset_params))

    def build(
        self,
        dataset: FederatedDataset | None = None,
        *,
        eval_every: int = 0,
        test_sets: TestSets | None = None,
        **driver: Any,
    ) -> FederatedSimulation:
        """The run's simulation; ``dataset`` when the caller has it loaded already.

        ``driver`` passes what only the driving process uses (a checkpoint folder, the
        backend) straight to :class:`FederatedSimulation`.
        """
        data = dataset if dataset is not None else self.load_dataset()
        module = build_model(self.model, data.input_shape, data.num_classes, **self.model_params)
        strategy = build_strategy(self.strategy, self.strategy_params, label=self.strategy_label)
        return FederatedSimulation(
            module=module,
            dataset=data,
            strategy=strategy,
            spec=self.spec,
            rounds=self.rounds,
            seed=self.seed,
            participation=self.participation,
            mode=self.mode,
            site_chunk=self.site_chunk,
            eval_every=eval_every,
            test_sets=test_sets,
            attack=self.attack,
            **driver,
        )


class _Lru:
    """A tiny least-recently-used map (one per worker process)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any | None:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


_DATASETS = _Lru(CACHE_SIZE)
_SIMULATIONS = _Lru(CACHE_SIZE)


def worker_simulation(recipe: SimulationRecipe) -> FederatedSimulation:
    """The run ``recipe`` describes, built once per worker process and then reused."""
    key = recipe.digest()
    cached = _SIMULATIONS.get(key)
    if isinstance(cached, FederatedSimulation):
        return cached
    data_key = recipe.data_digest()
    dataset = _DATASETS.get(data_key)
    if not isinstance(dataset, FederatedDataset):
        dataset = recipe.load_dataset()
        _DATASETS.put(data_key, dataset)
    simulation = recipe.build(dataset)
    _SIMULATIONS.put(key, simulation)
    return simulation


def cached_runs() -> int:
    """How many runs this process holds built (what the cache tests observe)."""
    return len(_SIMULATIONS.items)
