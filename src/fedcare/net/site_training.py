"""The torch half of a deployed site: local training and evaluation on its own rows.

It does for one site what the simulator does for that site: the model built from the
plan, the batch order drawn from the run's seed stream under (purpose, round, site index),
the same :class:`~fedcare.ml.trainer.LocalTrainer` and the same evaluation counts, so a
deployed run reaches the simulator's model.

Under the plan's ``sample_dp`` the site trains with :class:`~fedcare.ml.dp_sgd.DPSGDTrainer`
instead, with the noise multiplier it calibrates from the plan and its own row count (as the
simulator does for it), charges its own accountant at every step and reports its epsilon so
far with each update (``metrics["sample_epsilon"]``). Its Poisson batches and noise come
from the OS CSPRNG by default: the plan's seed is known to the coordinator, which could
otherwise replay the noise and the batches and void the guarantee. ``sample_noise="plan"``
draws them from the plan's seed stream exactly as the simulator does, for a validation run
that must reproduce the simulator's model (never for real patient data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

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
from fedcare.ml.dp_sgd import DPSGDConfig, DPSGDTrainer, dp_sgd_generators, poisson_schedule
from fedcare.ml.evaluate import evaluate_vector
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.torch_adapter import local_tensor_mask
from fedcare.ml.trainer import LocalTrainer, Mode, TrainResult
from fedcare.models.registry import build_model
from fedcare.privacy.mechanisms import secure_rng
from fedcare.privacy.sample_level import SampleLevelPrivacy
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.site import TrainTask

SampleNoise = Literal["secret", "plan"]
SAMPLE_EPSILON = "sample_epsilon"  # the update metric carrying the site's DP-SGD epsilon


class SiteTraining:
    """Implements :class:`fedcare.runtime.site.LocalWork` for one site and one plan."""

    def __init__(
        self,
        plan: RunPlan,
        data: SiteData,
        mode: Mode = "auto",
        *,
        sample_noise: SampleNoise = "secret",
    ) -> None:
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
        self.sample_noise: SampleNoise = sample_noise
        self.sample_private: SampleLevelPrivacy | None = None
        self.dp_trainer: DPSGDTrainer | None = None
        strategy = plan.build_strategy()
        if strategy.sample_dp is not None:
            n = {self.name: int(self.bank.counts[0])}
            spec = strategy.local_spec(plan.spec)
            self.sample_private = SampleLevelPrivacy(strategy.sample_dp, n, spec, plan.rounds)
            config = DPSGDConfig(
                self.sample_private.noise_multiplier(self.name), strategy.sample_dp.clip_norm
            )
            self.dp_trainer = DPSGDTrainer(self.module, plan.num_classes, config)

    @property
    def num_params(self) -> int:
        return self.layout.size

    def train(self, task: TrainTask) -> LocalOutcome:
        n = int(self.bank.counts[0])
        start = np.ascontiguousarray(task.start, dtype=np.float32)[None, :]
        metrics: dict[str, float] = {}
        if self.sample_private is not None:
            result = self._train_private(task, start, self.sample_private)
            metrics[SAMPLE_EPSILON] = self.sample_private.epsilons()[self.name]
        else:
            rng = SeedStream(task.seed).generator(task.purpose, task.round, task.site_index)
            schedule = batch_schedule(n, task.spec, rng)
            result = self.trainer.train(
                self.bank, [0], start, [schedule], [task.objective], task.spec
            )
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
            metrics=metrics,
        )

    def _train_private(
        self, task: TrainTask, start: npt.NDArray[np.float32], private: SampleLevelPrivacy
    ) -> TrainResult:
        """DP-SGD on this site's rows; every step is charged to the site's own accountant."""
        if self.dp_trainer is None:
            raise ConfigError(f"site '{self.name}': sample_dp without a DP-SGD trainer")
        if task.purpose != "batches":
            raise ConfigError(
                f"site '{self.name}': sample_dp covers the round's federated training only; "
                f"refusing a '{task.purpose}' pass (personal models, fine-tuning) on its rows"
            )
        if self.sample_noise == "plan":
            batches, noise = dp_sgd_generators(SeedStream(task.seed), task.round, task.site_index)
        else:
            batches, noise = secure_rng(), secure_rng()
        schedule = poisson_schedule(int(self.bank.counts[0]), task.spec, batches)
        return self.dp_trainer.train(
            self.bank,
            [0],
            start,
            [schedule],
            [task.objective],
            task.spec,
            accountants=[private.accountants[self.name]],
            noise_rngs=[noise],
            noise_multipliers=[private.noise_multiplier(self.name)],
        )

    def evaluate(self, params: FloatVector) -> EvalStats:
        return evaluate_vector(
            self.module, self.layout, params, self.x_test, self.y_test, self.num_classes
        )

    def local_mask(self, kind: str) -> npt.NDArray[np.bool_]:
        return local_tensor_mask(self.module, self.layout, kind)


def site_training(
    data: SiteData,
    mode: Mode = "auto",
    *,
    sample_noise: SampleNoise = "secret",
    threads: int | None = None,
) -> Callable[[RunPlan], SiteTraining]:
    """The work factory a :class:`~fedcare.runtime.site.SiteMachine` takes for this site's data.

    ``threads``: torch's intra-op threads for this process (None: torch's default, one per
    core). Several site agents sharing one machine (a loopback test) want 1 each, or their
    thread pools contend for the same cores.
    """
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, found {threads}")
        torch.set_num_threads(threads)

    def build(plan: RunPlan) -> SiteTraining:
        return SiteTraining(plan, data, mode, sample_noise=sample_noise)

    return build
