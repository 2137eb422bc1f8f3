"""The torch half of a deployed site: local training and evaluation on its own rows.

It does for one site what the simulator does for that site: the model built from the
plan, the batch order drawn from the run's seed stream under (purpose, round, site index),
the same :class:`~fedcare.ml.trainer.LocalTrainer` and the same evaluation counts, so a
deployed run reaches the simulator's model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalOutcome
from fedcare.core.seeds import SeedStream
from fedcare.core.vectors import FloatVector
from fedcare.data.base import SiteData
from fedcare.ml.databank import DataBank
from fedcare.ml.evaluate import evaluate_vector
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.torch_adapter import local_tensor_mask
from fedcare.ml.trainer import LocalTrainer, Mode
from fedcare.models.registry import build_model
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.site import TrainTask


class SiteTraining:
    """Implements :class:`fedcare.runtime.site.LocalWork` for one site and one plan."""

    def __init__(self, plan: RunPlan, data: SiteData, mode: Mode = "auto") -> None:
        shape = tuple(data.x_train.shape[1:])
        if shape != plan.input_shape:
            raise ConfigError(
                f"site '{data.name}': the plan's model takes inputs of shape "
                f"{plan.input_shape}, this site's rows have shape {shape}"
            )
        labels = np.concatenate([data.y_train, data.y_test])
        if labels.size and (labels.min() < 0 or labels.max() >= plan.num_classes):
            raise ConfigError(
                f"site '{data.name}': labels must lie in 0..{plan.num_classes - 1} for this plan, "
                f"found {int(labels.min())}..{int(labels.max())}"
            )
        self.plan = plan
        self.name = data.name
        self.num_classes = plan.num_classes
        self.module = build_model(
            plan.model, plan.input_shape, plan.num_classes, **plan.model_params
        )
        self.trainer = LocalTrainer(self.module, plan.num_classes, mode=mode)
        self.layout = self.trainer.layout
        self.bank = DataBank.from_arrays([data.x_train], [data.y_train])
        self.x_test = torch.from_numpy(data.x_test)
        self.y_test = torch.from_numpy(data.y_test)

    @property
    def num_params(self) -> int:
        return self.layout.size

    def train(self, task: TrainTask) -> LocalOutcome:
        n = int(self.bank.counts[0])
        rng = SeedStream(task.seed).generator(task.purpose, task.round, task.site_index)
        schedule = batch_schedule(n, task.spec, rng)
        start = np.ascontiguousarray(task.start, dtype=np.float32)[None, :]
        result = self.trainer.train(self.bank, [0], start, [schedule], [task.objective], task.spec)
        start_loss = None
        if task.start_loss:
            x, y = self.bank.site_arrays(0)
            start_loss = evaluate_vector(
                self.module, self.layout, task.start, x, y, self.num_classes
            ).loss
        return LocalOutcome(
            params=result.params[0].copy(),
            num_samples=n,
            num_steps=int(result.num_steps[0]),
            train_loss=float(result.train_loss[0]),
            start_loss=start_loss,
        )

    def evaluate(self, params: FloatVector) -> EvalStats:
        return evaluate_vector(
            self.module, self.layout, params, self.x_test, self.y_test, self.num_classes
        )

    def local_mask(self, kind: str) -> npt.NDArray[np.bool_]:
        return local_tensor_mask(self.module, self.layout, kind)


def site_training(data: SiteData, mode: Mode = "auto") -> Callable[[RunPlan], SiteTraining]:
    """The work factory a :class:`~fedcare.runtime.site.SiteMachine` takes for this site's data."""

    def build(plan: RunPlan) -> SiteTraining:
        return SiteTraining(plan, data, mode)

    return build
