"""The majority-class baseline: the floor a trained model has to beat.

Each site predicts the most common class of its own training rows for every test row
(per site, not the pooled majority: it needs nothing from other sites, like the local
baseline, and it is the stronger floor when sites' class balances differ). Its scores are
the site's training class frequencies (add-one smoothed, so the loss stays finite when a
class is absent), which makes it a prior predictor: AUC 0.5, balanced accuracy 1/C on
each site's test rows, and the loss of knowing only the class balance. It is evaluated
with the same additive counts as every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedcare.core.metrics import EvalStats
from fedcare.data.base import FederatedDataset
from fedcare.ml.losses import cox_neg_log_likelihood
from fedcare.sim.engine import RunResult

RULE = "each site predicts the most common class of its own training rows"
SURVIVAL_RULE = "every patient gets the same risk score (no covariates): C-index 0.5"


def class_prior(labels: npt.NDArray[np.int64], num_classes: int) -> npt.NDArray[np.float64]:
    """Training class frequencies, add-one smoothed (no class gets probability 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    prior: npt.NDArray[np.float64] = (counts + 1.0) / (counts.sum() + num_classes)
    return prior


def predicted_class(prior: npt.NDArray[np.float64]) -> int:
    """The class EvalStats counts as predicted for these scores (binary: positive on a tie)."""
    if prior.shape[0] == 2:
        return int(prior[1] >= 0.5)
    return int(prior.argmax())


def prior_eval(
    prior: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], num_classes: int
) -> EvalStats:
    """Counts of the constant prediction ``prior`` on one site's test rows."""
    n = labels.shape[0]
    # Binary counts read one score column (the positive class), multiclass all of them.
    probs = np.full(n, prior[1]) if num_classes == 2 else np.tile(prior, (n, 1))
    losses = -np.log(prior[labels])
    return EvalStats.from_predictions(probs, labels, losses, num_classes)


def majority_run(dataset: FederatedDataset) -> tuple[RunResult, dict[str, int]]:
    """Every site's evaluation under the majority rule, and the class each site predicts."""
    evals: dict[str, EvalStats] = {}
    classes: dict[str, int] = {}
    if dataset.task == "survival":
        # The survival floor: one risk for all, so no pair is ordered and the loss is the
        # Cox loss of knowing nothing about the patients.
        for site in dataset.sites:
            assert site.time_test is not None
            risk = np.zeros(site.num_test)
            loss = cox_neg_log_likelihood(risk, site.time_test, site.y_test)
            evals[site.name] = EvalStats.from_survival(
                risk, site.time_test, site.y_test, loss, dataset.num_classes
            )
        return RunResult(history=[], final_params=[], final_eval=evals), classes
    for site in dataset.sites:
        prior = class_prior(site.y_train, dataset.num_classes)
        evals[site.name] = prior_eval(prior, site.y_test, dataset.num_classes)
        classes[site.name] = predicted_class(prior)
    return RunResult(history=[], final_params=[], final_eval=evals), classes


def describe_classes(
    per_seed: Sequence[dict[str, int]], class_names: Sequence[str] | None
) -> dict[str, str]:
    """Per site, the class predicted (its name when known); seeds that disagree are all listed."""

    def name(c: int) -> str:
        return class_names[c] if class_names and c < len(class_names) else f"class {c}"

    sites = per_seed[0].keys() if per_seed else []
    return {
        site: " / ".join(name(c) for c in sorted({run[site] for run in per_seed})) for site in sites
    }
