"""The simulation round loop.

Sites with one architecture train together as one batched computation (see
:mod:`fedcare.ml.trainer`); aggregation streams chunk by chunk through the strategy's
accumulator, so memory does not grow with the number of sites. Every random draw comes
from the run's :class:`~fedcare.core.seeds.SeedStream`, keyed by round and site, so the
result does not depend on chunking, on the trainer mode, or on a resume from checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.algorithms.aggregate import aggregation_weight
from fedcare.algorithms.attacks import AttackSpec, attack_update, choose_attackers, flip_labels
from fedcare.algorithms.strategy import Strategy, chain_aggregate
from fedcare.core.errors import ConfigError
from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.data.base import FederatedDataset, SiteData
from fedcare.ml.databank import DataBank
from fedcare.ml.dp_sgd import (
    SURVIVAL_REFUSAL,
    DPSGDConfig,
    DPSGDTrainer,
    dp_sgd_generators,
    poisson_schedule,
)
from fedcare.ml.evaluate import evaluate_vector
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.torch_adapter import local_tensor_mask
from fedcare.ml.trainer import LocalTrainer, Mode, TrainResult
from fedcare.privacy.client_level import PrivateRounds
from fedcare.privacy.sample_level import SampleLevelPrivacy
from fedcare.rounds import (
    AggregationServices,
    ChunkResult,
    RoundPlan,
    RunState,
    SiteRound,
    TrainingTask,
    finish_training,
    keep_personal,
    new_aggregator,
    personal_task,
    round_context,
    server_step,
    site_model,
    training_task,
)
from fedcare.runtime.checkpoint import load_run_state, save_run_state
from fedcare.runtime.sampling import Participation, sample_sites
from fedcare.sim.backend import Backend, InProcessBackend, RoundChunks
from fedcare.sim.evaluation import TestSets, pooled
from fedcare.sim.secure_sum import build_summer

ProgressCallback = Callable[["RoundRecord"], None]


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
        backend: Backend | None = None,
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
        self.bank = DataBank.from_sites(dataset.sites)
        self.tests = test_sets or TestSets(dataset)
        self.names = dataset.site_names
        self.attack = attack
        self.attackers: set[str] = set()
        if attack is not None:
            self.attackers = choose_attackers(
                self.names, attack.fraction, self.seeds.generator("attack")
            )
            if attack.kind == "label_flip" and dataset.task == "survival":
                raise ConfigError(
                    "attack 'label_flip' needs class labels; survival data has times and events"
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
        if strategy.sample_dp is not None and dataset.task == "survival":
            raise ConfigError(SURVIVAL_REFUSAL)
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
        self.backend: Backend = backend or InProcessBackend()

    def run(self, progress: ProgressCallback | None = None, *, resume: bool = False) -> RunResult:
        layout = self.trainer.layout
        run = RunState(
            server=self.strategy.init_state(initial_params(self.module, self.seeds)),
            site_states={name: {} for name in self.names},
        )
        if resume and self.checkpoint_dir is not None:
            run = self._restore(run, load_run_state(self.checkpoint_dir))
        history = [RoundRecord(**r) for r in run.history]
        while run.round < self.rounds:
            started = time.perf_counter()
            run, record = self.step(run)
            if self.eval_every and (run.round % self.eval_every == 0 or run.round == self.rounds):
                stats = self.tests.evaluate_global(self.module, layout, run.server.params)
                record.site_metrics = {k: v.summary() for k, v in stats.items()}
                record.pooled_metrics = pooled(stats).summary()
            record.seconds = time.perf_counter() - started
            history.append(record)
            run = replace(run, history=(*run.history, dict(record.__dict__)))
            if self.checkpoint_dir is not None:
                save_run_state(self.checkpoint_dir, run)
            if progress is not None:
                progress(record)
        return self._result(run, history)

    def _restore(self, fresh: RunState, saved: RunState) -> RunState:
        """Continue from ``saved``: its state, and the DP accountants it recorded."""
        if self.private is not None and saved.privacy is not None:
            self.private.restore(saved.privacy)
        if self.sample_private is not None and saved.sample_privacy is not None:
            self.sample_private.restore(saved.sample_privacy)
        return replace(saved, site_states={**fresh.site_states, **saved.site_states})

    def _result(self, run: RunState, history: list[RoundRecord]) -> RunResult:
        layout = self.trainer.layout
        state, site_states = run.server, dict(run.site_states)
        global_eval = self.tests.evaluate_global(self.module, layout, state.params)
        sample_dp = {} if self.sample_private is None else self.sample_private.describe()
        if not self.personal.active:
            return RunResult(
                history, [state.params], global_eval, state, site_states, sample_dp=sample_dp
            )
        models = [
            site_model(self.strategy, state.params, site_states[n], self.local_mask)
            for n in self.names
        ]
        if self.personal.finetune_epochs:
            models = self._finetune(models)
        final_eval = self.tests.evaluate_own(self.module, layout, models)
        return RunResult(
            history, models, final_eval, state, site_states, {"global": global_eval}, sample_dp
        )

    def _finetune(self, models: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
        """Each site trains the final model on its own rows for a few epochs."""
        spec = replace(self.spec, epochs=self.personal.finetune_epochs, steps=None)
        sites = list(range(len(self.names)))
        schedules = self._schedules(sites, self.rounds, "misc", spec)
        result = self.trainer.train(
            self.bank, sites, np.stack(models), schedules, [LocalObjective()] * len(sites), spec
        )
        return list(result.params)

    def step(self, run: RunState) -> tuple[RunState, RoundRecord]:
        """One round: the next run state and the round's record (without evaluation)."""
        state = run.server
        sampled = sample_sites(len(self.names), self.participation, self.seeds, state.round)
        download = self.strategy.download_nbytes(state) * len(sampled)
        if self.strategy.schedule == "cyclic":
            new_state, uploads, loss = self._cyclic_round(state, run.site_states, sampled)
            site_states = dict(run.site_states)
        else:
            new_state, site_states, uploads, loss = self._parallel_round(run, sampled)
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
        next_run = replace(
            run,
            server=new_state,
            site_states=site_states,
            privacy=None if self.private is None else self.private.to_dict(),
            sample_privacy=None if self.sample_private is None else self.sample_private.to_dict(),
        )
        return next_run, record

    def _schedules(
        self,
        sites: Sequence[int] | npt.NDArray[np.int64],
        round_index: int,
        purpose: str = "batches",
        spec: TrainSpec | None = None,
    ) -> list[npt.NDArray[np.int64]]:
        """Each site's batches for a pass of ``spec`` (the run's), keyed by purpose and round."""
        return [
            batch_schedule(
                int(self.bank.counts[k]),
                spec or self.spec,
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
        self, run: RunState, sampled: npt.NDArray[np.int64]
    ) -> tuple[ServerState, dict[str, SiteState], dict[str, int], float]:
        """Map :meth:`run_chunk` over chunks of the sampled sites (through the backend),
        then the server step on the merged aggregate."""
        state = run.server
        plan = RoundPlan(state, sampled, round_context(self.strategy, state, len(self.names)))
        services = AggregationServices(self.private, self.summer, self.max_weight)
        aggregator = new_aggregator(
            self.strategy,
            state.params.size,
            round_index=plan.round_index,
            cohort=plan.cohort,
            services=services,
        )
        chunks = plan.chunks(self.site_chunk)
        work = RoundChunks(self, plan, run.site_states, chunks, ChunkResult(aggregator))
        merged = self.backend.map_chunks(work)
        combined = merged.aggregator.result()
        uploads = merged.upload_bytes
        for k, nbytes in combined.upload_bytes.items():
            uploads[self.names[k]] = nbytes  # the masked or encrypted upload replaces the plain one
        new_state = server_step(
            self.strategy,
            state,
            combined.aggregate,
            len(self.names),
            context=plan.context,
            collected=merged.collected,
        )
        site_states = {**run.site_states, **merged.site_states}
        return new_state, site_states, uploads, merged.loss_sum / max(float(merged.samples), 1.0)

    def run_chunk(
        self,
        plan: RoundPlan,
        site_states: Mapping[str, SiteState],
        chunk: npt.NDArray[np.int64],
        *,
        into: ChunkResult,
    ) -> ChunkResult:
        """The round at one chunk of sampled sites, trained as one batched computation:
        each site's training task, its upload added to ``into``'s aggregator, then the
        strategy's personal pass. Reads the sites' states from ``site_states`` and writes
        their new states, bytes sent and losses into ``into``, which it returns."""
        state = plan.state
        names = [self.names[int(k)] for k in chunk]
        site_plan = SiteRound(self.strategy, self.spec, state, plan.cohort, self.local_mask)
        tasks = [training_task(site_plan, site_states[n]) for n in names]
        starts = self._starts(tasks, state.params)
        result = self._train_sites(chunk, starts, state.round, [t.objective for t in tasks])
        start_losses = self._start_losses(starts, chunk) if tasks and tasks[0].start_loss else None
        new_states: dict[str, SiteState] = {}
        for i, (k, name) in enumerate(zip(chunk, names, strict=True)):
            outcome = LocalOutcome(
                params=result.params[i],
                num_samples=int(self.bank.counts[k]),
                num_steps=int(result.num_steps[i]),
                train_loss=float(result.train_loss[i]),
                start_loss=None if start_losses is None else start_losses[i],
            )
            new_states[name], upload = finish_training(
                site_plan,
                site_states[name],
                outcome,
                compress_rng=self._compress_rng(plan.round_index, int(k)),
                privatise=self._privatise(name, int(k), plan),
                tamper=self._tamper(name, int(k), plan.round_index),
            )
            into.aggregator.add(upload.update, int(k))
            into.upload_bytes[name] = upload.sent_bytes
            into.loss_sum += outcome.train_loss * outcome.num_samples
            into.samples += outcome.num_samples
        personal = self.personal.personal_pass
        if personal is not None:
            passes = [
                personal_task(
                    personal, personal.site_context(plan.context, int(k)), state, new_states[n]
                )
                for k, n in zip(chunk, names, strict=True)
            ]
            trained = self._personal_pass(chunk, passes, state.round)
            for i, (k, name) in enumerate(zip(chunk, names, strict=True)):
                new_states[name] = keep_personal(new_states[name], trained[i])
                if personal.collects:
                    into.collected[int(k)] = trained[i]
        into.site_states.update(new_states)
        return into

    @staticmethod
    def _starts(tasks: list[TrainingTask], params: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        """The tasks' starting models as one (K, size) block (a view when they all start
        from the received model)."""
        if all(t.start is params for t in tasks):
            return np.broadcast_to(params, (len(tasks), params.size))
        return np.stack([t.start for t in tasks])

    def _compress_rng(self, round_index: int, site: int) -> np.random.Generator | None:
        """The upload stages' randomness, keyed by round and site (None without stages)."""
        if not self.strategy.upload.stages:
            return None
        return self.seeds.generator("compress", round_index, site)

    def _privatise(
        self, name: str, site: int, plan: RoundPlan
    ) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None:
        """Client-level DP at the site (local, distributed), noise keyed by round and site."""
        private = self.private
        if private is None:
            return None
        return lambda delta: private.at_site(name, site, plan.round_index, delta, plan.cohort)

    def _tamper(
        self, name: str, site: int, round_index: int
    ) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None:
        """The simulated attack of an attacking site, or None."""
        attack = self.attack
        if attack is None or name not in self.attackers:
            return None
        rng = self.seeds.generator("attack", round_index, site)
        return lambda delta: attack_update(delta, attack, rng)

    def _personal_pass(
        self, chunk: npt.NDArray[np.int64], tasks: list[TrainingTask], round_index: int
    ) -> npt.NDArray[np.float32]:
        """Train each site's personal model (kept at the site) on its own batch order."""
        schedules = self._schedules(chunk, round_index, purpose=tasks[0].purpose)
        result = self.trainer.train(
            self.bank,
            chunk.tolist(),
            np.stack([t.start for t in tasks]),
            schedules,
            [t.objective for t in tasks],
            self.spec,
        )
        return result.params

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

    def _cyclic_round(
        self,
        state: ServerState,
        site_states: Mapping[str, SiteState],
        sampled: npt.NDArray[np.int64],
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
        self.bank = DataBank.from_sites(train_sets)
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
