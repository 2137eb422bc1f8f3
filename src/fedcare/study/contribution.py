"""How much each site contributes: Shapley values and leave-one-out of a federated study.

The utility of a coalition of sites is the mean per-site test accuracy (over every site's
own test set, coalition members or not) of the model those sites train together with the
chosen strategy. The empty coalition's utility is that of the untrained initial model.
Utilities are memoised, so Monte-Carlo Shapley reuses every coalition it has trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.algorithms.contribution import (
    CachedUtility,
    exact_shapley,
    leave_one_out,
    monte_carlo_shapley,
)
from fedcare.algorithms.registry import build_strategy
from fedcare.core.records import TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset
from fedcare.ml.torch_adapter import layout_of
from fedcare.models.registry import build_model
from fedcare.sim.engine import FederatedSimulation, initial_params
from fedcare.sim.evaluation import TestSets
from fedcare.study.config import ContributionConfig


@dataclass
class CoalitionUtility:
    """Trains and scores one model per coalition, once."""

    dataset: FederatedDataset
    model: tuple[str, dict[str, Any]]
    spec: TrainSpec
    rounds: int
    config: ContributionConfig
    test_sets: TestSets | None = None
    cache: dict[frozenset[str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tests: TestSets = self.test_sets or TestSets(self.dataset)

    def _module(self) -> Any:
        name, params = self.model
        return build_model(name, self.dataset.input_shape, self.dataset.num_classes, **params)

    def __call__(self, coalition: frozenset[str]) -> float:
        if coalition not in self.cache:
            self.cache[coalition] = self._train(coalition)
        return self.cache[coalition]

    def _score(self, module: Any, params: np.ndarray) -> float:
        stats = self.tests.evaluate_global(module, layout_of(module), params)
        return float(np.mean([s.accuracy for s in stats.values()]))

    def _train(self, coalition: frozenset[str]) -> float:
        module = self._module()
        if not coalition:
            return self._score(module, initial_params(module, SeedStream(self.config.seed)))
        members = [s for s in self.dataset.sites if s.name in coalition]
        subset = FederatedDataset(
            name=f"{self.dataset.name}[{','.join(sorted(coalition))}]",
            sites=members,
            task=self.dataset.task,
            num_classes=self.dataset.num_classes,
            input_shape=self.dataset.input_shape,
        )
        result = FederatedSimulation(
            module=module,
            dataset=subset,
            strategy=build_strategy(self.config.strategy, self.config.params),
            spec=self.spec,
            rounds=self.rounds,
            seed=self.config.seed,
            eval_every=0,
        ).run()
        return self._score(module, result.final_params[0])


def site_contributions(
    utility: Callable[[frozenset[str]], float], sites: list[str], config: ContributionConfig
) -> dict[str, Any]:
    """The report's contributions block: Shapley (exact and/or Monte-Carlo) and leave-one-out.

    Every method shares one memoised utility, so a coalition is trained at most once.
    """
    cached = CachedUtility(utility)
    per_site: dict[str, dict[str, float]] = {s: {} for s in sites}
    if config.method in ("exact", "both"):
        for site, value in exact_shapley(sites, cached).items():
            per_site[site]["shapley_exact"] = float(value)
    if config.method in ("monte_carlo", "both"):
        estimates = monte_carlo_shapley(
            sites,
            cached,
            permutations=config.permutations,
            rng=SeedStream(config.seed).generator("misc"),
            stratified=config.stratified,
            antithetic=config.antithetic,
        )
        for site, est in estimates.items():
            per_site[site]["shapley_monte_carlo"] = est.value
            if math.isfinite(est.stderr):  # one permutation has no spread
                per_site[site]["shapley_stderr"] = est.stderr
    for site, value in leave_one_out(sites, cached).items():
        per_site[site]["leave_one_out"] = float(value)
    return {
        "utility": "mean of the per-site test accuracies of the coalition's global model",
        "strategy": config.strategy,
        "method": config.method,
        "permutations": config.permutations,
        "sampling": ("stratified " if config.stratified else "")
        + ("antithetic" if config.antithetic else "plain"),
        "sites": per_site,
        "all_sites_utility": cached(frozenset(sites)),
        "empty_utility": cached(frozenset()),
        "coalitions_evaluated": cached.evaluations,
    }
