"""MOCHA (Smith et al., "Federated Multi-Task Learning", NeurIPS 2017) for linear models.

Each site t learns its own weights w_t; sites are tied by a learned task relationship:
    min_W  sum_t loss_t(w_t) + lambda1 tr(W^T P W) + lambda2 ||W||^2,
where the rows of W are the sites' models and P = Sigma^-1 is the precision of the task
covariance Sigma = (W W^T)^(1/2) / tr((W W^T)^(1/2)) (Zhang & Yeung 2010), re-estimated by
the coordinator after every round from the models the sites report. For fixed P, site t's
gradient of the regulariser is 2 lambda1 sum_s P_ts w_s + 2 lambda2 w_t: a proximal pull to
zero of strength 2 (lambda1 P_tt + lambda2) plus a constant correction from the other sites,
which is what :func:`site_objective` hands to local training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError
from fedcare.core.records import LocalObjective, ServerState, SiteState
from fedcare.core.vectors import FloatVector

Matrix = npt.NDArray[np.float64]
Array = npt.NDArray[Any]
MODELS = "mocha/models"
"""Server array of every site's latest model, one row per site, kept by the coordinator."""


def task_covariance(models: Matrix) -> Matrix:
    """Sigma = (W W^T)^(1/2) / tr(...), for W with one row per site."""
    gram = models @ models.T
    eigvals, eigvecs = np.linalg.eigh(gram)
    root = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
    trace = float(np.trace(root))
    if trace <= 0:
        return np.asarray(np.eye(models.shape[0]) / models.shape[0], dtype=np.float64)
    return np.asarray(root / trace, dtype=np.float64)


def task_precision(covariance: Matrix, ridge: float = 0.1) -> Matrix:
    """(Sigma + ridge I)^-1. Sigma has unit trace, so the ridge caps the precision at
    1/ridge: without it, sites with near-identical models (every site at the start) give
    an unbounded proximal pull and local SGD diverges."""
    m = covariance.shape[0]
    return np.asarray(np.linalg.inv(covariance + ridge * np.eye(m)), dtype=np.float64)


def site_objective(
    precision: Matrix,
    models: npt.NDArray[np.floating[Any]],
    site: int,
    lambda1: float,
    lambda2: float,
) -> LocalObjective:
    """Site ``site``'s local objective under a fixed task relationship."""
    if lambda1 < 0 or lambda2 < 0:
        raise ConfigError(f"mocha: lambda1 and lambda2 must be >= 0, found {lambda1}, {lambda2}")
    row = precision[site]
    others = row @ models - row[site] * models[site]
    return LocalObjective(
        prox_mu=float(2 * (lambda1 * row[site] + lambda2)),
        anchor=np.zeros(models.shape[1], dtype=np.float32),
        correction=(2 * lambda1 * others).astype(np.float32),
    )


def regulariser(models: Matrix, precision: Matrix, lambda1: float, lambda2: float) -> float:
    """lambda1 tr(W^T P W) + lambda2 ||W||^2 (for tests and monitoring)."""
    return float(
        lambda1 * np.trace(models.T @ precision @ models) + lambda2 * np.sum(models * models)
    )


@dataclass(frozen=True)
class MochaRound:
    """What the coordinator fixes at the start of a round: every site's model and P."""

    models: npt.NDArray[np.float32]  # (num_sites, size)
    precision: Matrix


@dataclass(frozen=True)
class MochaPass:
    """MOCHA as a personal pass: each site trains its own model under the relationship
    fixed at round start and reports it; the coordinator keeps every site's model."""

    lambda1: float
    lambda2: float
    collects: bool = True

    def context(self, state: ServerState, num_sites: int) -> MochaRound:
        stored = state.arrays.get(MODELS)
        flat = np.tile(state.params, num_sites) if stored is None else stored
        models = flat.reshape(num_sites, -1)
        return MochaRound(models, task_precision(task_covariance(models.astype(np.float64))))

    def site_context(self, context: MochaRound, site: int) -> dict[str, Array]:
        """Site ``site``'s model and its objective under the round's relationship: what the
        coordinator sends it (never the other sites' models)."""
        objective = site_objective(
            context.precision, context.models, site, self.lambda1, self.lambda2
        )
        correction = objective.correction
        if correction is None:
            raise ValueError("MOCHA's site objective always has a correction term")
        return {
            "start": context.models[site].copy(),
            "prox_mu": np.array([objective.prox_mu], dtype=np.float64),
            "correction": correction,
        }

    def task(
        self, site_context: Mapping[str, Array], global_params: FloatVector, site_state: SiteState
    ) -> tuple[FloatVector, LocalObjective]:
        start = np.asarray(site_context["start"], dtype=np.float32)
        objective = LocalObjective(
            prox_mu=float(site_context["prox_mu"][0]),
            anchor=np.zeros(start.size, dtype=np.float32),
            correction=np.asarray(site_context["correction"], dtype=np.float32),
        )
        return start, objective

    def server_arrays(
        self, state: ServerState, context: MochaRound, trained: Mapping[int, FloatVector]
    ) -> dict[str, FloatVector]:
        models = np.array(context.models, dtype=np.float32)
        for site, params in trained.items():
            models[site] = params
        return {MODELS: models.reshape(-1)}
