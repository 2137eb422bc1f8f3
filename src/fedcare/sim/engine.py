"""The simulation round loop.

Sites with one architecture train together as one batched computation (see
:mod:`fedcare.ml.trainer`); aggregation streams chunk by chunk through the strategy's
accumulator, so memory does not grow with the number of sites. Every random draw comes
from the run's :class:`~fedcare.core.seeds.SeedStream`, keyed by round and site, so the
result does not depend on chunking, on the trainer mode, or on a resume from checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.algorithms.aggregate import Aggregate, aggregation_weight
from fedcare.algorithms.attacks import AttackSpec, attack_update, choose_attackers, flip_labels
from fedcare.algorithms.mocha import site_objective, task_covariance, task_precision
from fedcare.algorithms.personal import (
    PERSONAL_MODEL,
    ditto_objective,
    ditto_start,
    keep_local,
    personal_model,
    site_start,
)
from fedcare.algorithms.strategy import Strategy, chain_aggregate
from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.ml.databank import DataBank
from fedcare.ml.dp_sgd import DPSGDConfig, DPSGDTrainer, dp_sgd_generators, poisson_schedule
from fedcare.ml.evaluate import evaluate_vector
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.torch_adapter import local_tensor_mask
from fedcare.ml.trainer import LocalTrainer, Mode, TrainResult
from fedcare.privacy.client_level import PrivateRounds
from fedcare.privacy.sample_level import SampleLevelPrivacy
from fedcare.runtime.checkpoint import load_checkpoint, save_checkpoint
from fedcare.runtime.sampling import Participation, sample_sites
from fedcare.runtime.secure_round import mean_of_sum, secure_input
from fedcare.sim.evaluation import TestSets, pooled
from fedcare.sim.secure_sum import build_summer

ProgressCallback = Callable[["RoundRecord"], None]
MOCHA_MODELS = "mocha/models"


@dataclass
class RoundRecord:
    """What happened in one round (or one epoch-equivalent of a baseline)."""

    round: int
    participants: list[str]
    train_loss: float
    upload_bytes: int
    download_bytes: int
    seconds: float
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    pooled_metrics: dict[str, float] = field(default_factory=dict)
    site_upload_bytes: dict[str, int] = field(default_factory=dict)  # what each site sent
    epsilon: float | None = None  # privacy spent so far (client-level DP), at the run's delta
    # Sample-level DP-SGD: each site's epsilon so far, at the run's sample_dp delta.
    sample_epsilon: dict[str, float] | None = None

    def mean_site(self, metric: str) -> float:
        values = [m[metric] for m in self.site_metrics.values()]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class RunResult:
    history: list[RoundRecord]
    final_params: list[npt.NDArray[np.float32]]  # one global model, or one per site
    final_eval: dict[str, EvalStats]
    state: ServerState | None = None
    site_states: dict[str, SiteState] = field(default_factory=dict)
    # Personalised runs also keep the shared global model's scores, to show each site's gain.
    reference_evals: dict[str, dict[str, EvalStats]] = field(default_factory=dict)
    # Sample-level DP-SGD settings (delta, accountant, each site's z); empty without it.
    sample_dp: dict[str, Any] = field(default_factory=dict)

    @property
    def upload_bytes(self) -> int:
        return sum(r.upload_bytes for r in self.history)

    @property
    def download_bytes(self) -> int:
        return sum(r.download_bytes for r in self.history)


def initial_params(module: nn.Module, seeds: SeedStream) -> npt.NDArray[np.float32]:
    """The run's initial model: re-initialised from the seed stream, not from torch's global RNG."""
    generator_seed = seeds.integer_seed("init")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    return LocalTrainer(module, 2, mode="sequential").initial_vector()


def _chunks(indices: npt.NDArray[np.int64], size: int) -> list[npt.NDArray[np.int64]]:
    return [indices[i : i + size] for i in range(0, len(indices), max(size, 1))]


class FederatedSimulation:
    """One federated run of a strategy over a dataset's sites."""

    def __init__(
        self,
        *,
        module: nn.Module,
        dataset: FederatedDataset,
        strategy: Strategy,
        spec: TrainSpec,
        rounds: int,
        seed: int,
        participation: Participation | None = None,
        mode: Mode = "auto",
        site_chunk: int = 256,
        eval_every: int = 1,
        checkpoint_dir: Path | None = None,
        test_sets: TestSets | None = None,
        attack: AttackSpec | None = None,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, found {rounds}")
        self.module = module
        self.dataset = dataset
        self.strategy = strategy
        self.spec = strategy.local_spec(spec)
        self.rounds = rounds
        self.seeds = SeedStream(seed)
        self.participation = participation or Participation()
        self.trainer = LocalTrainer(module, dataset.num_classes, mode=mode)
        self.site_chunk = site_chunk
        self.eval_every = eval_every
        self.checkpoint_dir = checkpoint_dir
        self.bank = DataBank.from_arrays(
            [s.x_train for s in dataset.sites], [s.y_train for s in dataset.sites]
        )
        self.tests = test_sets or TestSets(dataset)
        self.names = dataset.site_names
        self.attack = attack
        self.attackers: set[str] = set()
        if attack is not None:
            self.attackers = choose_attackers(
                self.names, attack.fraction, self.seeds.generator("attack")
            )
            if attack.kind == "label_flip":
                for k, name in enumerate(self.names):
                    if name in self.attackers:
                        rows = self.bank.rows(k)
                        flipped = flip_labels(self.bank.y[rows].numpy(), dataset.num_classes)
                        self.bank.y[rows] = torch.from_numpy(flipped)
        self.robust_rule = strategy.robust_rule()
        self.private = (
            PrivateRounds(
                strategy.dp,
                num_sites=len(self.names),
                sampling_rate=self.participation.fraction,
                rounds=rounds,
                seeds=self.seeds,
            )
            if strategy.dp is not None
            else None
        )
        self.summer = build_summer(strategy.secure, seed) if strategy.secure is not None else None
        # Sample-level DP-SGD: sites train with DPSGDTrainer, each charging its own accountant.
        self.sample_private: SampleLevelPrivacy | None = None
        self.dp_trainer: DPSGDTrainer | None = None
        if strategy.sample_dp is not None:
            counts = {n: int(c) for n, c in zip(self.names, self.bank.counts, strict=True)}
            self.sample_private = SampleLevelPrivacy(strategy.sample_dp, counts, self.spec, rounds)
            z = max(p.noise_multiplier for p in self.sample_private.plans.values())
            config = DPSGDConfig(noise_multiplier=z, clip_norm=strategy.sample_dp.clip_norm)
            self.dp_trainer = DPSGDTrainer(module, dataset.num_classes, config)
        # Secure summation carries weights normalised by the largest possible one (public),
        # so every entry stays inside the ring's range.
        self.max_weight = max(
            aggregation_weight(int(c), strategy.weighting) for c in self.bank.counts
        )
        self.personal = strategy.personal
        kind = self.personal.mask_kind
        self.local_mask = local_tensor_mask(module, self.trainer.layout, kind) if kind else None

    def run(self, progress: ProgressCallback | None = None, *, resume: bool = False) -> RunResult:
        layout = self.trainer.layout
        state = self.strategy.init_state(initial_params(self.module, self.seeds))
        site_states: dict[str, SiteState] = {name: {} for name in self.names}
        history: list[RoundRecord] = []
        if resume and self.checkpoint_dir is not None:
            ckpt = load_checkpoint(self.checkpoint_dir)
            state, history = ckpt.state, [RoundRecord(**r) for r in ckpt.extra.get("history", [])]
            site_states.update(ckpt.site_states)
            if self.private is not None and "privacy" in ckpt.extra:
                self.private.restore(ckpt.extra["privacy"])
            if self.sample_private is not None and "sample_privacy" in ckpt.extra:
                self.sample_private.restore(ckpt.extra["sample_privacy"])
        while state.round < self.rounds:
            started = time.perf_counter()
            state, record = self._round(state, site_states)
            if self.eval_every and (
                state.round % self.eval_every == 0 or state.round == self.rounds
            ):
                stats = self.tests.evaluate_global(self.module, layout, state.params)
                record.site_metrics = {k: v.summary() for k, v in stats.items()}
                record.pooled_metrics = pooled(stats).summary()
            record.seconds = time.perf_counter() - started
            history.append(record)
            if self.checkpoint_dir is not None:
                extra: dict[str, Any] = {"history": [r.__dict__ for r in history]}
                if self.private is not None:
                    extra["privacy"] = self.private.to_dict()
                if self.sample_private is not None:
                    extra["sample_privacy"] = self.sample_private.to_dict()
                save_checkpoint(self.checkpoint_dir, state, site_states, extra)
            if progress is not None:
                progress(record)
        global_eval = self.tests.evaluate_global(self.module, layout, state.params)
        sample_dp = {} if self.sample_private is None else self.sample_private.describe()
        if not self.personal.active:
            return RunResult(
                history, [state.params], global_eval, state, site_states, sample_dp=sample_dp
            )
        models = self._personal_models(state, site_states)
        if self.personal.finetune_epochs:
            models = self._finetune(models)
        final_eval = self.tests.evaluate_own(self.module, layout, models)
        return RunResult(
            history, models, final_eval, state, site_states, {"global": global_eval}, sample_dp
        )

    def _personal_models(
        self, state: ServerState, site_states: dict[str, SiteState]
    ) -> list[npt.NDArray[np.float32]]:
        return [
            personal_model(state.params, site_states[n], self.personal, self.local_mask)
            for n in self.names
        ]

    def _evaluate(
        self, state: ServerState, site_states: dict[str, SiteState]
    ) -> dict[str, EvalStats]:
        """Each round: the global model, or each site's personalised model under FedPer/FedBN/Ditto."""
        layout = self.trainer.layout
        if self.personal.kind is None:
            return self.tests.evaluate_global(self.module, layout, state.params)
        return self.tests.evaluate_own(
            self.module, layout, self._personal_models(state, site_states)
        )

    def _finetune(self, models: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
        """Each site trains the final model on its own rows for a few epochs."""
        spec = replace(self.spec, epochs=self.personal.finetune_epochs, steps=None)
        sites = list(range(len(self.names)))
        schedules = [
            batch_schedule(
                int(self.bank.counts[k]), spec, self.seeds.generator("misc", self.rounds, k)
            )
            for k in sites
        ]
        result = self.trainer.train(
            self.bank, sites, np.stack(models), schedules, [LocalObjective()] * len(sites), spec
        )
        return list(result.params)

    def _round(
        self, state: ServerState, site_states: dict[str, SiteState]
    ) -> tuple[ServerState, RoundRecord]:
        r = state.round
        sampled = sample_sites(len(self.names), self.participation, self.seeds, r)
        download = self.strategy.download_nbytes(state) * len(sampled)
        if self.strategy.schedule == "cyclic":
            new_state, uploads, loss = self._cyclic_round(state, site_states, sampled)
        else:
            new_state, uploads, loss = self._parallel_round(state, site_states, sampled)
        record = RoundRecord(
            round=new_state.round,
            participants=[self.names[i] for i in sampled],
            train_loss=loss,
            upload_bytes=sum(uploads.values()),
            download_bytes=download,
            seconds=0.0,
            site_upload_bytes=uploads,
            epsilon=None if self.private is None else self.private.epsilon(),
            sample_epsilon=None
            if self.sample_private is None
            else self.sample_private.close_round(new_state.round),
        )
        return new_state, record

    def _schedules(
        self,
        sites: Sequence[int] | npt.NDArray[np.int64],
        round_index: int,
        purpose: str = "batches",
    ) -> list[npt.NDArray[np.int64]]:
        return [
            batch_schedule(
                int(self.bank.counts[k]),
                self.spec,
                self.seeds.generator(purpose, round_index, int(k)),
            )
            for k in sites
        ]

    def _train_sites(
        self,
        sites: Sequence[int] | npt.NDArray[np.int64],
        starts: npt.NDArray[np.float32],
        round_index: int,
        objectives: list[LocalObjective],
    ) -> TrainResult:
        """One round's local training: plain batches, or DP-SGD under ``sample_dp``.

        DP-SGD draws each site's Poisson batches and noise from the run's seed stream
        (:func:`~fedcare.ml.dp_sgd.dp_sgd_generators`), as a deployed site can reproduce.
        """
        if self.dp_trainer is None or self.sample_private is None:
            return self.trainer.train(
                self.bank,
                [int(k) for k in sites],
                starts,
                self._schedules(sites, round_index),
                objectives,
                self.spec,
            )
        private = self.sample_private
        schedules, noise_rngs = [], []
        for k in sites:
            batches, noise = dp_sgd_generators(self.seeds, round_index, int(k))
            schedules.append(poisson_schedule(int(self.bank.counts[k]), self.spec, batches))
            noise_rngs.append(noise)
        names = [self.names[int(k)] for k in sites]
        return self.dp_trainer.train(
            self.bank,
            [int(k) for k in sites],
            starts,
            schedules,
            objectives,
            self.spec,
            accountants=[private.accountants[n] for n in names],
            noise_rngs=noise_rngs,
            noise_multipliers=[private.noise_multiplier(n) for n in names],
        )

    def _parallel_round(
        self, state: ServerState, site_states: dict[str, SiteState], sampled: npt.NDArray[np.int64]
    ) -> tuple[ServerState, dict[str, int], float]:
        accumulator = self.strategy.new_accumulator(state)
        uploads: dict[str, int] = {}
        collected: list[tuple[npt.NDArray[np.float32], float]] = []
        hidden: dict[int, npt.NDArray[np.float32]] = {}  # inputs to the secure sum
        if self.private is not None:
            self.private.start_round(state.round + 1, state.params.size)
        mocha_models: npt.NDArray[np.float32] = np.zeros((0, 0), dtype=np.float32)
        if self.personal.kind == "mocha":
            mocha_models = np.array(self._mocha_round_start(state)[0], dtype=np.float32)
        loss_weighted = 0.0
        for chunk in _chunks(sampled, self.site_chunk):
            names = [self.names[k] for k in chunk]
            objectives = [self.strategy.objective(state, site_states[n]) for n in names]
            mask = self.local_mask
            if mask is None:
                starts = np.broadcast_to(state.params, (len(chunk), state.params.size))
            else:
                starts = np.stack([site_start(state.params, site_states[n], mask) for n in names])
            result = self._train_sites(chunk, starts, state.round, objectives)
            start_losses = (
                self._start_losses(starts, chunk) if self.strategy.needs_start_loss else None
            )
            for i, (k, name) in enumerate(zip(chunk, names, strict=True)):
                outcome = LocalOutcome(
                    params=result.params[i],
                    num_samples=int(self.bank.counts[k]),
                    num_steps=int(result.num_steps[i]),
                    train_loss=float(result.train_loss[i]),
                    start_loss=None if start_losses is None else start_losses[i],
                )
                site_states[name], update = self.strategy.client_update(
                    state, site_states[name], outcome, self.spec
                )
                if self.attack is not None and name in self.attackers:
                    rng = self.seeds.generator("attack", state.round + 1, int(k))
                    update.delta = attack_update(update.delta, self.attack, rng)
                if self.private is not None:
                    if mask is not None:  # clip and noise what is shared, nothing else
                        update.delta = np.where(mask, np.float32(0), update.delta)
                    update.delta = self.private.at_site(
                        name, int(k), state.round + 1, update.delta, len(sampled)
                    )
                site_states[name], update.delta, sent = self._upload(
                    update.delta, site_states[name], state.round + 1, int(k)
                )
                sent += update.nbytes() - update.delta.nbytes  # extras travel uncompressed
                if mask is not None:
                    site_states[name] = keep_local(site_states[name], outcome.params, mask)
                uploads[name] = sent
                if self.summer is not None:
                    hidden[int(k)] = secure_input(
                        update.delta,
                        update.weight,
                        self.max_weight,
                        private=self.private is not None,
                    )
                elif self.private is not None:
                    self.private.add(update.delta)
                else:
                    if self.robust_rule is not None:
                        collected.append((update.delta, update.weight))
                    accumulator.add(update.delta, update.weight, update.extras)
                loss_weighted += outcome.train_loss * outcome.num_samples
            if self.personal.kind == "ditto":
                self._ditto_pass(state, site_states, chunk, names)
            elif self.personal.kind == "mocha":
                self._mocha_pass(state, site_states, chunk, names, mocha_models)
        if self.summer is not None or self.private is not None:
            delta = self._hidden_mean(state.round + 1, hidden, uploads, len(sampled))
            aggregate = Aggregate(delta, {}, float(len(sampled)), len(sampled))
        else:
            aggregate = accumulator.result()
        if self.robust_rule is not None:
            # Robust rules need every update at once; extras keep their uniform mean.
            stacked = np.stack([d for d, _ in collected])
            weights = np.array([w for _, w in collected], dtype=np.float64)
            aggregate.delta = self.robust_rule(stacked, weights)
        new_state = self.strategy.server_update(state, aggregate, len(self.names))
        if self.personal.kind == "mocha":
            # The coordinator keeps every site's reported model to re-estimate the relationship.
            new_state.arrays[MOCHA_MODELS] = mocha_models.reshape(-1)
        total = float(sum(int(self.bank.counts[k]) for k in sampled))
        return new_state, uploads, loss_weighted / max(total, 1.0)

    def _hidden_mean(
        self,
        round_index: int,
        hidden: dict[int, npt.NDArray[np.float32]],
        uploads: dict[str, int],
        cohort: int,
    ) -> npt.NDArray[np.float32]:
        """The round's mean update when the coordinator sees only a sum (secure and/or DP)."""
        if self.summer is None:
            if self.private is None:
                raise RuntimeError("_hidden_mean needs secure summation or DP")
            return self.private.release(round_index)
        result = self.summer.sum(hidden, round_index)
        for k, nbytes in result.upload_bytes.items():
            uploads[self.names[k]] = nbytes  # the masked or encrypted upload replaces the plain one
        if self.private is not None:
            return self.private.release(
                round_index, result.total, cohort=cohort, received=len(result.included)
            )
        return mean_of_sum(result.total, round_index)

    def _upload(
        self, delta: npt.NDArray[np.float32], site_state: SiteState, round_index: int, site: int
    ) -> tuple[SiteState, npt.NDArray[np.float32], int]:
        """Send one update through the strategy's upload stages.

        Returns the site's new state (top-k keeps its residual there), the update as the
        coordinator decodes it, and the bytes it took on the wire. Entries a personalised
        strategy keeps local are neither encoded nor counted; they arrive as zeros.
        """
        mask = self.local_mask
        pipeline = self.strategy.upload
        shared = delta if mask is None else delta[~mask]
        if not pipeline.stages:
            encoded_bytes, decoded = int(shared.nbytes), shared
        else:
            rng = self.seeds.generator("compress", round_index, site)
            encoded, site_state = pipeline.encode(shared, site_state, rng)
            encoded_bytes, decoded = encoded.nbytes, pipeline.decode(encoded)
        if mask is None:
            return site_state, decoded, encoded_bytes
        full = np.zeros_like(delta)
        full[~mask] = decoded
        return site_state, full, encoded_bytes

    def _start_losses(
        self, starts: npt.NDArray[np.float32], chunk: npt.NDArray[np.int64]
    ) -> list[float]:
        """Each site's mean training loss at its starting model (computed at the site)."""
        layout = self.trainer.layout
        out = []
        for i, k in enumerate(chunk):
            x, y = self.bank.site_arrays(int(k))
            stats = evaluate_vector(self.module, layout, starts[i], x, y, self.dataset.num_classes)
            out.append(stats.loss)
        return out

    def _mocha_round_start(
        self, state: ServerState
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """The coordinator's copy of every site's model and the task precision for this round."""
        stored = state.arrays.get(MOCHA_MODELS)
        models = (np.tile(state.params, len(self.names)) if stored is None else stored).reshape(
            len(self.names), -1
        )
        return models, task_precision(task_covariance(models.astype(np.float64)))

    def _mocha_pass(
        self,
        state: ServerState,
        site_states: dict[str, SiteState],
        chunk: npt.NDArray[np.int64],
        names: list[str],
        updated: npt.NDArray[np.float32],
    ) -> None:
        """MOCHA: each site trains its own model under the relationship fixed at round start."""
        models, precision = self._mocha_round_start(state)
        lam1, lam2 = self.personal.mocha_lambda1, self.personal.mocha_lambda2
        objectives = [site_objective(precision, models, int(k), lam1, lam2) for k in chunk]
        trained = self._personal_pass(
            state, site_states, chunk, names, models[chunk].copy(), objectives
        )
        updated[chunk] = trained

    def _ditto_pass(
        self,
        state: ServerState,
        site_states: dict[str, SiteState],
        chunk: npt.NDArray[np.int64],
        names: list[str],
    ) -> None:
        """Ditto's second half: each site's personal model, pulled towards this round's global."""
        starts = np.stack([ditto_start(state.params, site_states[n]) for n in names])
        objective = ditto_objective(state.params, self.personal.ditto_lambda)
        self._personal_pass(state, site_states, chunk, names, starts, [objective] * len(names))

    def _personal_pass(
        self,
        state: ServerState,
        site_states: dict[str, SiteState],
        chunk: npt.NDArray[np.int64],
        names: list[str],
        starts: npt.NDArray[np.float32],
        objectives: list[LocalObjective],
    ) -> npt.NDArray[np.float32]:
        """Train each site's personal model (kept at the site) on its own batch order."""
        schedules = self._schedules(chunk, state.round, purpose="misc")
        result = self.trainer.train(
            self.bank, chunk.tolist(), starts, schedules, objectives, self.spec
        )
        for i, name in enumerate(names):
            site_states[name] = {**site_states[name], PERSONAL_MODEL: result.params[i].copy()}
        return result.params

    def _cyclic_round(
        self, state: ServerState, site_states: dict[str, SiteState], sampled: npt.NDArray[np.int64]
    ) -> tuple[ServerState, dict[str, int], float]:
        params = state.params
        uploads: dict[str, int] = {}
        losses = []
        for k in sampled:
            name = self.names[k]
            objective = self.strategy.objective(state, site_states[name])
            result = self._train_sites([int(k)], params[None, :], state.round, [objective])
            params = result.params[0].copy()
            uploads[name] = params.nbytes
            losses.append(float(result.train_loss[0]))
        weight = float(sum(int(self.bank.counts[k]) for k in sampled))
        new_state = self.strategy.server_update(
            state, chain_aggregate(state.params, params, len(sampled), weight), len(self.names)
        )
        return new_state, uploads, float(np.mean(losses)) if losses else float("nan")


class IsolatedTraining:
    """Baselines without federation: each training set trains its own model continuously.

    ``local``: one model per site on its own rows, evaluated on its own test set.
    ``pooled``: one model on every site's rows together (the centralised upper reference),
    evaluated on every site's test set. One "round" is one pass of ``spec``.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        dataset: FederatedDataset,
        spec: TrainSpec,
        rounds: int,
        seed: int,
        pooled: bool,
        mode: Mode = "auto",
        eval_every: int = 1,
        test_sets: TestSets | None = None,
    ) -> None:
        self.module = module
        self.dataset = dataset
        self.spec = spec
        self.rounds = rounds
        self.seeds = SeedStream(seed)
        self.pooled = pooled
        self.trainer = LocalTrainer(module, dataset.num_classes, mode=mode)
        self.eval_every = eval_every
        train_sets: list[SiteData] = [dataset.pooled()] if pooled else dataset.sites
        self.bank = DataBank.from_arrays(
            [s.x_train for s in train_sets], [s.y_train for s in train_sets]
        )
        self.tests = test_sets or TestSets(dataset)

    def _evaluate(self, params: npt.NDArray[np.float32]) -> dict[str, EvalStats]:
        layout = self.trainer.layout
        if self.pooled:
            return self.tests.evaluate_global(self.module, layout, params[0])
        return self.tests.evaluate_own(self.module, layout, list(params))

    def run(self, progress: ProgressCallback | None = None) -> RunResult:
        k = self.bank.num_sites
        start = initial_params(self.module, self.seeds)
        params = np.tile(start, (k, 1))
        opt_states: list[Any] | None = None
        history: list[RoundRecord] = []
        names = ["pooled"] if self.pooled else self.dataset.site_names
        for r in range(self.rounds):
            started = time.perf_counter()
            schedules = [
                batch_schedule(
                    int(self.bank.counts[i]), self.spec, self.seeds.generator("batches", r, i)
                )
                for i in range(k)
            ]
            objectives = [LocalObjective()] * k
            result = self.trainer.train(
                self.bank, list(range(k)), params, schedules, objectives, self.spec, opt_states
            )
            params, opt_states = result.params, result.opt_states
            weights = self.bank.counts.astype(np.float64)
            record = RoundRecord(
                round=r + 1,
                participants=names,
                train_loss=float((result.train_loss * weights).sum() / weights.sum()),
                upload_bytes=0,
                download_bytes=0,
                seconds=0.0,
            )
            if self.eval_every and ((r + 1) % self.eval_every == 0 or r + 1 == self.rounds):
                stats = self._evaluate(params)
                record.site_metrics = {n: s.summary() for n, s in stats.items()}
                record.pooled_metrics = pooled(stats).summary()
            record.seconds = time.perf_counter() - started
            history.append(record)
            if progress is not None:
                progress(record)
        return RunResult(history, list(params), self._evaluate(params))
