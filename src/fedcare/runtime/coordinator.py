"""The coordinator's side of a deployed run, as a sans-IO state machine.

The machine never touches a socket, a clock or a disk: a driver (the gRPC server, or a
test) feeds it envelopes stamped with the sender's authenticated identity, connection
changes and the time, and sends what it returns. It does the simulator's maths with the
simulator's seeds: the same sites sampled per round, the same strategy halves, the same
streaming aggregation, so with every site answering it reaches the simulator's model.

Phases: WAITING (for sites) -> TRAINING -> [EVALUATING] -> WAITING ... -> FINISHED or FAILED.
A round starts once every sampled site is ready (connected, data valid, plan approved).
It waits for a connected site whose owner has not approved the plan yet until
``approval_timeout_s`` after the plan was sent to it (owners approve by hand, so the
start grace never cuts that short), and for an absent site until ``start_grace_s``.
A site whose data failed its check is out of the run, never waited for, until it
reconnects and its Hello passes; when fewer sampled sites than a round needs can take
part, the run stops (FAILED) naming each site and why. Stragglers past the deadline,
sites that disconnect and rejected updates are left out of that round only; a site that
reconnects says Hello, approves again and is sampled as usual from the next round on.
A round that ends with fewer contributors than sampled sites records which are missing
and why (``missing`` in its history record, and a ``round_short`` event).

Client-level DP (``dp`` in the strategy params, central mode): each decoded update is
clipped here and the round releases the noised mean over the expected number of sites,
through the simulator's own :class:`~fedcare.privacy.client_level.PrivateRounds`. Epsilon
after each round goes into the round's events and history, the accountant into the
checkpoint. The noise is keyed by ``noise_seed``, a secret of the coordinator's drawn from
the OS CSPRNG unless given (the plan's seed is known to every site, which could subtract
noise drawn from it; tests pass the plan's seed to reproduce the simulator's release).

Durability: an event that changes what a resumed run must continue from carries a
``snapshot`` (the :meth:`checkpoint` at that moment): ``round_completed`` when an
evaluation follows (the aggregate exists; the evaluation request tells sites the round
counted) and ``round_finished``. Drivers write the snapshot as the checkpoint before
recording the event anywhere else, and persist every event before sending the returned
messages, so no site ever learns of a round the coordinator could come back without. A
run restored from a checkpoint taken after aggregation re-sends that round's evaluation
(sites answer it again; nothing is trained twice) instead of re-running the round; a site
that says it already counted a round this coordinator has not fails the run loudly.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from fedcare.algorithms.aggregate import Aggregate
from fedcare.algorithms.strategy import Strategy
from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.core.metrics import EvalStats, eval_counts, eval_from_counts
from fedcare.core.records import LocalOutcome, ServerState
from fedcare.core.seeds import SeedStream
from fedcare.core.vectors import FloatVector
from fedcare.privacy.client_level import PrivateRounds
from fedcare.rounds import (
    AggregationServices,
    Aggregator,
    SecureSumAggregator,
    broadcast_arrays,
    new_aggregator,
    round_context,
    server_step,
    site_contexts,
)
from fedcare.runtime.encrypted_round import HE, EncryptedSumCollector
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    ALREADY_COUNTED,
    BUDGET_EXCEEDED,
    DATA_INVALID,
    EVALUATE,
    SCHEMAS,
    SESSION,
    TRAIN,
    ApprovalStatus,
    ErrorReport,
    EvalRequest,
    EvalResult,
    Hello,
    JobPlan,
    RunFinished,
    TrainRequest,
    UpdateMessage,
    UpdateVerdict,
    parse_message,
    vector_digest,
)
from fedcare.runtime.model_allow import MODEL_NOT_ALLOWED
from fedcare.runtime.replay import ReplayGuard
from fedcare.runtime.rounds import Contribution, EvalProgress, RoundProgress, RunPlan
from fedcare.runtime.router import ANY, Router, Unrouted
from fedcare.runtime.sampling import sample_sites
from fedcare.runtime.secure_round import (
    Addressed,
    SecureRound,
    SecureSum,
    SecureSumCollector,
    secagg_config,
)
from fedcare.runtime.secure_wire import SECAGG, session_of, step_of
from fedcare.runtime.streamed_update import FoldedMean, UpdateIntake
from fedcare.runtime.validation import validate_update
from fedcare.transforms.pipeline import compression_stage, from_wire, stage_dict


class Phase(Enum):
    WAITING = "waiting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class CoordinatorOptions:
    round_timeout_s: float = 600.0  # a sampled site's time to answer a train request
    eval_timeout_s: float = 300.0
    start_grace_s: float = 60.0  # wait this long for absent sampled sites before starting
    # A connected site's owner has this long (from the plan reaching the site) to approve
    # it before rounds start without that site.
    approval_timeout_s: float = 3600.0
    max_update_norm: float | None = None  # optional L2 bound on every update
    max_attempts: int = 5  # tries of one round that ends with too few updates
    secure_stage_timeout_s: float = 120.0  # each secure-aggregation stage after training


class Outgoing(NamedTuple):
    recipient: str
    envelope: Envelope


@dataclass(frozen=True)
class RuntimeEvent:
    """Something the run store and the audit log record; ``detail`` is JSON-safe."""

    kind: str
    run_id: str
    round: int
    site: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    # The checkpoint to make durable before this event is recorded or anything is sent.
    snapshot: tuple[ServerState, dict[str, Any]] | None = field(default=None, compare=False)


@dataclass
class SiteStatus:
    connected: bool = False
    data_ok: bool = False
    approved: bool = False
    waiting_approval: bool = False
    refused: str = ""  # why the site refused the plan (its privacy budget), if it did
    # Why its data keeps it out of the run (kept across reconnects until a Hello passes).
    excluded: str = ""
    plan_sent_at: float | None = None  # when its job plan went out, while not approved
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.connected and self.data_ok and self.approved

    @property
    def out(self) -> str:
        """Why the site cannot take part until it reconnects ("" if it can)."""
        return self.excluded or (f"refused the plan: {self.refused}" if self.refused else "")

    def why_not_ready(self) -> str:
        if self.excluded:
            return self.excluded
        if not self.connected:
            return "not connected"
        if not self.data_ok:
            return "no hello yet"
        if self.refused:
            return f"refused the plan: {self.refused}"
        if self.waiting_approval:
            return "waiting for its owner to approve the plan"
        return "has not answered the job plan"


def data_failure(problems: list[str]) -> str:
    """Why a site whose data failed its check is out of the run (status and round logs)."""
    if len(problems) == 1:
        found = f": {problems[0]}"
    else:
        found = f" ({len(problems)} problems, first: {problems[0]})" if problems else ""
    return f"data failed its check{found}; out until its agent restarts with fixed data"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


INPUT_STEPS = ("masked_input", "encrypted_update")  # the messages that carry a site's input


SAMPLE_EPSILON = "sample_epsilon"  # an update metric: the site's DP-SGD epsilon so far


def _secure_meta(env: Envelope) -> dict[str, Any]:
    """What a site states beside its keys: its weight, sample count and training loss
    (and, under sample-level DP-SGD, its epsilon so far)."""
    meta: dict[str, Any] = {}
    eps = env.header.get(SAMPLE_EPSILON)
    if isinstance(eps, int | float) and not isinstance(eps, bool):
        meta[SAMPLE_EPSILON] = eps
    for name in ("weight", "num_samples", "train_loss"):
        value = env.header.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ProtocolError(f"secagg keys from '{env.sender}': '{name}' must be a number")
        meta[name] = value
    return meta


def _expected_extras(strategy: Strategy, spec: Any) -> dict[str, int | None]:
    """Which extras the client rule uploads: a dry run on a 2-parameter model.

    Extras as long as the model (SCAFFOLD's control delta) map to None ("model-sized").
    """
    probe = strategy.init_state(np.zeros(2, dtype=np.float32))
    outcome = LocalOutcome(probe.params + 1, num_samples=1, num_steps=1, train_loss=1.0)
    outcome.start_loss = 1.0
    _, update = strategy.client_update(probe, {}, outcome, spec)
    return {k: (None if v.size == 2 else int(v.size)) for k, v in update.extras.items()}


class CoordinatorMachine:
    """One run of one plan at the coordinator."""

    def __init__(
        self,
        run_id: str,
        plan: RunPlan,
        initial_params: FloatVector,
        *,
        options: CoordinatorOptions | None = None,
        strategy: Strategy | None = None,
        state: ServerState | None = None,
        noise_seed: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.plan = plan
        self.plan_dict = plan.to_dict()
        self.plan_hash = plan.hash
        self.options = options or CoordinatorOptions()
        self.strategy = strategy or plan.build_strategy()
        self.spec = self.strategy.local_spec(plan.spec)
        self.seeds = SeedStream(plan.seed)
        self.robust_rule = self.strategy.robust_rule()
        self.noise_seed = secrets.randbits(63) if noise_seed is None else int(noise_seed)
        self.private = self._private_rounds()
        self.state = state or self.strategy.init_state(np.asarray(initial_params, np.float32))
        self.size = int(self.state.params.size)
        self.extras = {
            k: self.size if n is None else n
            for k, n in _expected_extras(self.strategy, self.spec).items()
        }
        self.min_updates = plan.participation.min_sites
        self.sites: dict[str, SiteStatus] = {name: SiteStatus() for name in plan.sites}
        self.contributed: dict[str, int] = dict.fromkeys(plan.sites, -1)
        self.history: list[dict[str, Any]] = []
        self._safe_history: list[Any] = []  # _history_json's cache
        self._safe_sources: list[dict[str, Any]] = []
        self.final_eval: dict[str, EvalStats] = {}
        self.reference_evals: dict[str, dict[str, EvalStats]] = {}
        self.phase = Phase.WAITING
        self.attempt = 0
        self.waiting_since: float | None = None
        self.current: RoundProgress | None = None
        self.evaluation: EvalProgress | None = None
        # The aggregated round whose evaluation is pending: its history record so far
        # (JSON-safe, in the checkpoint), so a resumed run finishes it without the progress.
        self.completed: dict[str, Any] | None = None
        self.eval_started = 0.0
        self.failure = ""
        self.secure_sum: SecureSum | None = None  # this round's, under SecAgg or CKKS
        # Sample-level DP-SGD: each site's own epsilon so far, as it reports it.
        self.sample_epsilon: dict[str, float] | None = (
            dict.fromkeys(plan.sites, 0.0) if self.strategy.sample_dp is not None else None
        )
        self.guard = ReplayGuard(run_id)
        self.guard.open_round(self.state.round)
        # A run of a deployed study: the whole study plan goes with the job plan (its hash
        # is what owners approve); set by the driver (see fedcare.net.coordinator_server).
        self.study_plan: dict[str, Any] | None = None
        self.study_hash = ""
        self._events: list[RuntimeEvent] = []
        self._now = 0.0

    def _private_rounds(self) -> PrivateRounds | None:
        # Which modes combine with secure summation was checked when the strategy was built.
        dp = self.strategy.dp
        if dp is None:
            return None
        return PrivateRounds(
            dp,
            num_sites=len(self.plan.sites),
            sampling_rate=self.plan.participation.fraction,
            rounds=self.plan.rounds,
            seeds=SeedStream(self.noise_seed),
        )

    def epsilon(self) -> float | None:
        """Client-level epsilon spent so far at the plan's delta (None without DP)."""
        return None if self.private is None else self.private.epsilon()

    @property
    def folds_updates(self) -> bool:
        """Whether rounds aggregate a plain weighted mean, folded block by block from the
        accepted updates when the round closes (see :mod:`.streamed_update`), so updates
        may stream in chunk by chunk (:meth:`handle_streamed`). Central DP clips each
        update whole, robust rules need all updates at once, secure sums and compressed
        uploads arrive in their own encodings, a collecting personal pass (MOCHA) keeps
        each site's model beside its update: those take whole messages."""
        personal = self.strategy.personal.personal_pass
        return (
            self.private is None
            and self.robust_rule is None
            and (personal is None or not personal.collects)  # it keeps every site's model
            and self.strategy.secure is None
            and compression_stage(self.strategy.upload.stages) is None
        )

    # -- public surface --------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase in (Phase.FINISHED, Phase.FAILED)

    @property
    def round(self) -> int:
        """Rounds completed so far (the simulator's ``state.round``)."""
        return self.state.round

    @property
    def final_params(self) -> FloatVector:
        return self.state.params

    def waiting_for_approval(self) -> list[str]:
        return [n for n, s in self.sites.items() if s.connected and s.waiting_approval]

    def ready_sites(self) -> list[str]:
        return [n for n, s in self.sites.items() if s.ready]

    def drain_events(self) -> list[RuntimeEvent]:
        events, self._events = self._events, []
        return events

    def checkpoint(self) -> tuple[ServerState, dict[str, Any]]:
        """(server state, JSON-safe extra) for :func:`~fedcare.runtime.checkpoint.save_checkpoint`.

        Taken on ``round_finished`` it holds everything a resumed run needs.
        """
        extra: dict[str, Any] = {
            "run_id": self.run_id,
            "plan_hash": self.plan_hash,
            "history": self._history_json(),
            "contributed": dict(self.contributed),
            "stage": "finished" if self.completed is None else "aggregated",
        }
        if self.completed is not None:
            extra["completed"] = _json_safe(self.completed)
        if self.final_eval:  # the last round's: a run resumed from here can still report
            extra["final_counts"] = {s: eval_counts(e) for s, e in self.final_eval.items()}
            extra["reference_counts"] = {
                kind: {s: eval_counts(e) for s, e in evals.items()}
                for kind, evals in self.reference_evals.items()
            }
        if self.private is not None:
            extra["privacy"] = {**self.private.to_dict(), "noise_seed": self.noise_seed}
        if self.sample_epsilon is not None:
            extra["sample_epsilon"] = dict(self.sample_epsilon)
        return self.state, extra

    def _history_json(self) -> list[Any]:
        """The history made JSON-safe; records never change once appended, so each is
        converted once (a checkpoint per round would otherwise redo every earlier one)."""
        safe = self._safe_history
        if len(safe) > len(self.history) or any(
            a is not b for a, b in zip(self._safe_sources, self.history, strict=False)
        ):
            safe.clear()
            self._safe_sources.clear()
        for record in self.history[len(safe) :]:
            safe.append(_json_safe(record))
            self._safe_sources.append(record)
        return list(safe)

    @classmethod
    def restore(
        cls,
        plan: RunPlan,
        state: ServerState,
        extra: Mapping[str, Any],
        *,
        options: CoordinatorOptions | None = None,
        strategy: Strategy | None = None,
    ) -> CoordinatorMachine:
        """Continue a run from a checkpoint; refuses one taken under another plan."""
        if extra.get("plan_hash") != plan.hash:
            raise ConfigError(
                f"checkpoint of run '{extra.get('run_id')}' was taken under plan "
                f"{extra.get('plan_hash')}, not {plan.hash}"
            )
        privacy = extra.get("privacy")
        if (privacy is None) != (plan.dp is None):
            raise ConfigError(
                f"checkpoint of run '{extra.get('run_id')}' "
                + (
                    "has no privacy accountant but the plan uses DP"
                    if privacy is None
                    else "has a privacy accountant but the plan has no DP"
                )
            )
        machine = cls(
            str(extra["run_id"]),
            plan,
            state.params,
            options=options,
            strategy=strategy,
            state=state,
            noise_seed=None if privacy is None else int(privacy["noise_seed"]),
        )
        if machine.private is not None and privacy is not None:
            machine.private.restore(privacy)
        machine.history = [dict(r) for r in extra.get("history", [])]
        if machine.sample_epsilon is not None:
            for site, eps in dict(extra.get("sample_epsilon", {})).items():
                if site in machine.sample_epsilon:
                    machine.sample_epsilon[site] = float(eps)
        for site, r in dict(extra.get("contributed", {})).items():
            if site in machine.contributed:
                machine.contributed[site] = int(r)
        completed = extra.get("completed")
        if extra.get("stage") == "aggregated" and isinstance(completed, dict):
            machine.completed = dict(completed)  # its evaluation is re-sent once sites are back
        elif machine.round >= plan.rounds:
            machine.phase = Phase.FINISHED  # checkpointed after the last round
            where = f"checkpoint of run '{machine.run_id}'"
            machine.final_eval = {
                str(s): eval_from_counts(c, where)
                for s, c in dict(extra.get("final_counts", {})).items()
            }
            machine.reference_evals = {
                str(kind): {str(s): eval_from_counts(c, where) for s, c in dict(evals).items()}
                for kind, evals in dict(extra.get("reference_counts", {})).items()
            }
        return machine

    def resumed_finished(self) -> None:
        """A run restored from its final checkpoint whose end was never recorded."""
        if self.phase is Phase.FINISHED:
            model_hash = vector_digest(self.state.params)
            self._event("run_finished", detail={"model_hash": model_hash, "rounds": self.round})

    # -- connections -----------------------------------------------------------------------

    def site_connected(self, name: str, now: float) -> list[Outgoing]:
        self._now = now
        if name not in self.sites:
            self._event("unknown_site", name, {"reason": "not in the job plan"})
            return []
        previous = self.sites[name]  # a data failure stays until a Hello passes
        self.sites[name] = SiteStatus(
            connected=True, excluded=previous.excluded, problems=previous.problems
        )
        self._event("site_connected", name)
        return []  # the site speaks first (Hello)

    def carry_data_failures(self, previous: Mapping[str, SiteStatus]) -> None:
        """The study's next run: a site whose data failed its check in the previous run
        stays out (no round waits for it) until its agent reconnects with data that passes."""
        for name, before in previous.items():
            status = self.sites.get(name)
            if status is None or not before.excluded:
                continue
            status.excluded, status.problems = before.excluded, list(before.problems)
            detail = {"problems": status.problems, "reason": status.excluded, "carried": True}
            self._event("data_problem", name, detail)

    def site_disconnected(
        self, name: str, now: float, reason: str = "the connection closed"
    ) -> list[Outgoing]:
        """``reason``: what the transport saw (never empty in the event)."""
        self._now = now
        status = self.sites.get(name)
        if status is None:
            return []
        status.connected = status.approved = status.waiting_approval = False
        status.plan_sent_at = None
        detail = {"reason": reason or "the connection closed"}
        if status.excluded:
            detail["out"] = status.excluded
        self._event("site_disconnected", name, detail)
        return self._drop(name, "disconnected during the round", evaluation="disconnected")

    # -- messages --------------------------------------------------------------------------

    def handle(self, env: Envelope, now: float) -> list[Outgoing]:
        """React to one message from a site (``env.sender`` set by the transport)."""
        self._now = now
        site = env.sender
        if site not in self.sites:
            self._event("message_rejected", site, {"reason": "unknown_site", "kind": env.kind})
            return []
        try:
            route = COORDINATOR_ROUTES.route(env, self.phase.value)
        except ProtocolError as exc:
            return self._reject(site, "malformed", str(exc))
        if isinstance(route, Unrouted):
            detail = f"a site may not send '{env.kind}'"
            if route.phases:
                detail = f"'{env.kind}' is not expected while the coordinator is {route.phase}"
            return self._reject(site, "unexpected", detail)
        return route(self, env)

    def handle_streamed(self, env: Envelope, intake: UpdateIntake, now: float) -> list[Outgoing]:
        """An update whose vector streamed chunk by chunk into ``intake`` (hashed and
        measured on the way, kept where the driver put it): ``env`` is its envelope
        without the vector. Parsed, refused and accepted exactly like a whole update."""
        self._now = now
        site = env.sender
        if site not in self.sites:
            intake.discard()
            self._event("message_rejected", site, {"reason": "unknown_site", "kind": env.kind})
            return []
        # The header is parsed as usual, against a stand-in of the announced length that
        # takes no memory (a broadcast zero); the values themselves stay in the intake.
        stand_in = replace(env, vector=np.broadcast_to(np.float32(0), (intake.size,)))
        try:
            message = parse_message(stand_in)
            if not isinstance(message, UpdateMessage) or message.wire is not None:
                raise ProtocolError(f"'{env.kind}' cannot stream as a plain update")
        except ProtocolError as exc:
            intake.discard()
            return self._reject(site, "malformed", str(exc))
        out = self._on_update(stand_in, message, intake)
        aggregator = self.current.aggregator if self.current is not None else None
        kept = aggregator.sources if isinstance(aggregator, FoldedMean) else []
        if all(source is not intake for source, _ in kept):  # refused, or already folded
            intake.discard()
        return out

    def tick(self, now: float) -> list[Outgoing]:
        """Deadlines: start a round after the grace period, drop stragglers, end evaluation."""
        self._now = now
        if self.phase is Phase.WAITING:
            return self._maybe_start_round()
        if self.phase is Phase.TRAINING and self.secure_sum is not None:
            return self._secure_step(lambda c: c.expire(now))
        late: list[str] = []
        if self.phase is Phase.TRAINING and self.current and now >= self.current.deadline:
            late, reason = list(self.current.pending), "missed the round deadline"
        if self.phase is Phase.EVALUATING and self.evaluation and now >= self.evaluation.deadline:
            late, reason = list(self.evaluation.pending), "missed the evaluation deadline"
        out: list[Outgoing] = []
        for site in late:  # the last one finishes the round or its evaluation
            out += self._drop(site, reason)
        return out

    def _admit(self, env: Envelope, **kwargs: Any) -> bool:
        return self._refusal(env, **kwargs) is None

    def _refusal(self, env: Envelope, **kwargs: Any) -> str | None:
        """None if the replay guard admits ``env``; else log and return why not."""
        rejection = self.guard.check(env, **kwargs)
        if rejection is None:
            return None
        self._event(
            "message_rejected",
            env.sender,
            {"reason": rejection.reason, "kind": env.kind, "detail": rejection.detail},
        )
        return f"{rejection.reason}: {rejection.detail}"

    def _on_hello(self, env: Envelope, hello: Hello) -> list[Outgoing]:
        if not self._admit(env, round_bound=False, any_run=True):
            return []
        site = env.sender
        status = self.sites[site]
        status.connected = True
        status.data, status.problems, status.data_ok = hello.data, hello.problems, hello.data_ok
        if not hello.data_ok:
            # Out of the run (no round waits for it); acknowledged, so the site can stop
            # (it would wait for a plan that never comes).
            status.approved = status.waiting_approval = False
            status.excluded = data_failure(hello.problems)
            self._event(
                "data_problem", site, {"problems": hello.problems, "reason": status.excluded}
            )
            text = (
                f"run {self.run_id}: this site's data failed its check ({len(hello.problems)} "
                "problem(s)); it takes no part until the data is fixed and the agent restarted"
            )
            told = ErrorReport(self.run_id, self.round, DATA_INVALID, text).to_envelope()
            return [Outgoing(site, told), *self._maybe_start_round()]
        if status.excluded:
            self._event("site_readmitted", site, {"was": status.excluded})
            status.excluded = ""
        self._event("site_hello", site, {"data": hello.data})
        if self.done:
            return [self._finished_message(site)]
        status.plan_sent_at = self._now
        plan = JobPlan(
            self.run_id,
            self.round,
            self.plan_dict,
            self.plan_hash,
            study=self.study_plan,
            study_hash=self.study_hash,
        )
        return [Outgoing(site, plan.to_envelope())]

    def _on_approval(self, env: Envelope, status_msg: ApprovalStatus) -> list[Outgoing]:
        if not self._admit(env, round_bound=False):
            return []
        site = env.sender
        if status_msg.plan_hash != self.plan_hash:
            detail = (
                f"approval is for plan {status_msg.plan_hash}, this run's plan is {self.plan_hash}"
            )
            return self._reject(site, "wrong_plan", detail)
        status = self.sites[site]
        status.approved = status_msg.approved
        status.waiting_approval = not status_msg.approved
        if status.plan_sent_at is None:  # an answer before any plan: its deadline starts now
            status.plan_sent_at = self._now
        kind = "site_approved" if status_msg.approved else "waiting_approval"
        self._event(kind, site, {"plan_hash": self.plan_hash, "detail": status_msg.detail})
        return self._maybe_start_round() if self.phase is Phase.WAITING else []

    def _on_error(self, env: Envelope, report: ErrorReport) -> list[Outgoing]:
        if not self._admit(env, round_bound=False):
            return []
        site = env.sender
        self._event("site_error", site, {"code": report.code, "message": report.message})
        reason = f"{report.code}: {report.message}"
        if report.code == ALREADY_COUNTED and not self.done:
            # The site holds a later state than this coordinator: continuing would train
            # without it (a different model, silently). Only a rolled-back coordinator
            # state can cause this, and a person must look at it.
            return self._stop(
                f"site '{site}' reports {report.message}, but this coordinator is at round "
                f"{self.round + 1}: its checkpoint is older than what the sites already "
                "counted (restored from an old copy?); the run cannot continue consistently"
            )
        if report.code in (BUDGET_EXCEEDED, MODEL_NOT_ALLOWED):
            # Its privacy budget cannot pay for (more of) this run, or its owner does not
            # allow the model's code: not asked again until it reconnects and re-checks.
            status = self.sites[site]
            status.approved, status.waiting_approval, status.refused = False, False, report.message
            self._event("plan_refused", site, {"plan_hash": self.plan_hash, "reason": reason})
            if self.phase is Phase.WAITING:
                return self._maybe_start_round()
        return self._drop(site, reason)

    def _drop(self, site: str, reason: str, *, evaluation: str = "") -> list[Outgoing]:
        """The one path for a site lost mid-round (disconnected, late, or reporting an
        error): left out of the round in progress (or of its secure sum), or of the
        pending evaluation (``evaluation``: its reason there, if worded differently)."""
        if self.phase is Phase.TRAINING and self.secure_sum is not None:
            return self._secure_drop(site, reason)
        if self.phase is Phase.TRAINING and self.current and site in self.current.pending:
            self.current.dropped[site] = reason
            self._event("site_dropped", site, {"reason": reason})
            return self._maybe_finish_training()
        if self.phase is Phase.EVALUATING and self.evaluation and site in self.evaluation.pending:
            self.evaluation.missing[site] = evaluation or reason
            return self._maybe_finish_eval()
        return []

    # -- rounds ----------------------------------------------------------------------------

    def _maybe_start_round(self) -> list[Outgoing]:
        if self.phase is not Phase.WAITING:
            return []
        if self.completed is not None:
            return self._maybe_resume_eval()
        r = self.round
        sampled = [
            self.plan.sites[int(i)]
            for i in sample_sites(len(self.plan.sites), self.plan.participation, self.seeds, r)
        ]
        stop = self._too_few_usable(sampled)
        if stop:
            return self._stop(stop)
        ready = [s for s in sampled if self.sites[s].ready]
        awaited = self._awaited(sampled)
        if len(ready) < self._needed() or awaited:
            return []
        self.waiting_since = None
        return self._start_round(sampled, ready)

    def _maybe_resume_eval(self) -> list[Outgoing]:
        """Restored after aggregation: evaluate that round once the sites are back (each
        plan site is waited for as a round would wait for it)."""
        if self.completed is None:
            return []
        if self._awaited(list(self.sites)):
            return []
        self.waiting_since = None
        self._event("evaluation_resent", detail={"round": self.round})
        return self._start_eval(bool(self.completed.get("final")))

    def _needed(self) -> int:
        """Updates a round needs: --min-sites; a secure sum needs two inputs at least, or
        the "sum" is one site's update."""
        return max(self.min_updates, 2 if self.strategy.secure else 1)

    def _awaited(self, sites: list[str]) -> bool:
        """Whether to wait longer for any of ``sites`` not ready yet (the start grace runs
        from the first time this is asked since the last round started)."""
        if self.waiting_since is None:
            self.waiting_since = self._now
        grace_over = self._now - self.waiting_since >= self.options.start_grace_s
        return any(not self.sites[s].ready and self._awaits(s, grace_over) for s in sites)

    def _awaits(self, site: str, grace_over: bool) -> bool:
        """Whether the round still waits for this sampled site, which is not ready."""
        status = self.sites[site]
        if status.out:  # its data failed, or it refused the plan: never waited for
            return False
        if status.plan_sent_at is not None:  # its owner is deciding: until the deadline
            return self._now < status.plan_sent_at + self.options.approval_timeout_s
        return not grace_over  # absent (or no Hello yet): the start grace

    def _left_out(self, site: str) -> str:
        """Why a sampled site is not asked to train in the round that starts now."""
        status = self.sites[site]
        why = status.why_not_ready()
        if not status.out and status.plan_sent_at is not None:
            waited = self.options.approval_timeout_s
            return f"{why} (the approval deadline of {waited:g} s passed)"
        return why

    def _too_few_usable(self, sampled: list[str]) -> str:
        """Why the run must stop: fewer sampled sites can take part than a round needs
        ("" while enough can)."""
        out = {s: self.sites[s].out for s in sampled if self.sites[s].out}
        usable = len(sampled) - len(out)
        needed = self._needed()
        if usable >= needed:
            return ""
        reasons = "; ".join(f"'{s}': {why}" for s, why in out.items())
        return (
            f"stopped before round {self.round + 1}: a round needs updates from at least "
            f"{needed} site(s) (--min-sites), but only {usable} of the {len(sampled)} "
            f"site(s) sampled for it can take part; {reasons}"
        )

    def _stop(self, reason: str) -> list[Outgoing]:
        self.phase = Phase.FAILED
        self.failure = reason
        out = {s: st.out for s, st in self.sites.items() if st.out}
        self._event("run_failed", detail={"reason": reason, "sites": out})
        return self._finish_messages()

    def _start_round(self, sampled: list[str], ready: list[str]) -> list[Outgoing]:
        r = self.round
        self.guard.open_round(r)
        progress = RoundProgress(
            round=r,
            attempt=self.attempt,
            sampled=sampled,
            requested=ready,
            started=self._now,
            deadline=self._now + self.options.round_timeout_s,
            aggregator=self._new_aggregator(r, len(sampled)),
            download_bytes=self.strategy.download_nbytes(self.state) * len(ready),
        )
        for site in sampled:
            if site not in ready:
                progress.dropped[site] = self._left_out(site)
        self.current = progress
        self.phase = Phase.TRAINING
        self._event(
            "round_started",
            detail={
                "attempt": self.attempt,
                "sampled": sampled,
                "requested": ready,
                "dropped": dict(progress.dropped),
            },
        )
        # Only the broadcast arrays travel; server-optimizer moments and the sites' models
        # a personal pass collects stay here: each site gets its own context.
        progress.context = round_context(self.strategy, self.state, len(self.plan.sites))
        broadcast = broadcast_arrays(self.strategy, self.state, progress.context)
        indices = {site: self.plan.site_index(site) for site in ready}
        contexts = site_contexts(self.strategy, progress.context, indices.values())
        secure = self._open_secure_sum(progress) if self.strategy.secure is not None else None
        progress.secure_session = secure.session if secure is not None else b""
        out = []
        for site in ready:
            request = TrainRequest(
                run_id=self.run_id,
                round=r,
                plan_hash=self.plan_hash,
                params=self.state.params,
                arrays=broadcast,
                seed=self.plan.seed,
                site_index=indices[site],
                sampled=sampled,
                attempt=self.attempt,
                deadline_s=self.options.round_timeout_s,
                contributed=self.contributed[site],
                secure=secure,
                site_context=contexts[indices[site]],
            )
            out.append(Outgoing(site, request.to_envelope()))
        return out

    def _new_aggregator(self, round_: int, cohort: int) -> Aggregator | FoldedMean:
        """The round core's aggregator for the round (it opens a DP round, keying the noise
        like the simulator's); a plain mean is folded from where updates arrived."""
        if self.folds_updates:
            return FoldedMean(self.size, dict(self.extras))
        services = AggregationServices(privacy=self.private, weight_scale=self._weight_scale())
        return new_aggregator(
            self.strategy, self.size, round_index=round_ + 1, cohort=cohort, services=services
        )

    def _on_update(
        self, env: Envelope, msg: UpdateMessage, intake: UpdateIntake | None = None
    ) -> list[Outgoing]:
        site = env.sender
        refusal = self._refusal(env, once_per_site=("update", msg.attempt))
        if refusal is not None:
            return [self._verdict(site, msg, False, refusal)]
        progress = self.current
        if (
            self.phase is not Phase.TRAINING
            or progress is None
            or msg.attempt != progress.attempt
            or site not in progress.pending
            or self.secure_sum is not None
        ):
            reason = "no update was expected from this site for this round and attempt"
            if self.secure_sum is not None:
                reason = "this plan aggregates securely: a plain update is refused"
            self._event("message_rejected", site, {"reason": "unexpected", "detail": reason})
            return [self._verdict(site, msg, False, reason)]
        received = vector_digest(env.vector) if intake is None else intake.digest
        try:
            if received != msg.update_hash:
                raise UpdateRejectedError(
                    f"update from site '{site}' for round {msg.round}: announced hash "
                    f"{msg.update_hash[:16]}… but the vector hashes to {received[:16]}…"
                )
            if msg.wire is not None:
                msg = msg.decoded(self._decode_wire(site, msg))
            norm = validate_update(
                msg, self.size, self.options.max_update_norm, extras=self.extras, streamed=intake
            )
            self._check_personal(site, msg)
        except UpdateRejectedError as exc:
            progress.rejected[site] = str(exc)
            self._event("update_rejected", site, {"reason": str(exc), "update_hash": received})
            out = [self._verdict(site, msg, False, str(exc))]
            return out + self._maybe_finish_training()
        if intake is not None and isinstance(progress.aggregator, FoldedMean):
            progress.aggregator.add_source(intake, msg.weight)  # folded when the round closes
        else:
            progress.aggregator.add(msg.to_update(), self.plan.site_index(site))
        if msg.personal is not None:
            progress.collected[self.plan.site_index(site)] = msg.personal
        loss = msg.metrics.get("train_loss", float("nan"))
        self._note_sample_epsilon(site, msg.metrics.get(SAMPLE_EPSILON))
        progress.accepted[site] = Contribution(
            msg.weight, msg.num_samples, env.nbytes, received, norm, loss
        )
        self._event(
            "update_accepted",
            site,
            _json_safe(
                {
                    "update_hash": received,
                    "nbytes": env.nbytes,
                    "weight": msg.weight,
                    "num_samples": msg.num_samples,
                    "norm": norm,
                    "train_loss": loss,
                }
            ),
        )
        return [self._verdict(site, msg, True, ""), *self._maybe_finish_training()]

    def _check_personal(self, site: str, msg: UpdateMessage) -> None:
        """A collecting personal pass (MOCHA) needs the site's trained model beside its
        update: present, the model's size, finite; no other strategy takes one."""
        personal = self.strategy.personal.personal_pass
        collects = personal is not None and personal.collects
        where = f"update from site '{site}' for round {msg.round}"
        if msg.personal is None:
            if collects:
                raise UpdateRejectedError(
                    f"{where}: strategy '{self.plan.strategy}' collects every site's personal "
                    "model, and the update carries none"
                )
            return
        if not collects:
            raise UpdateRejectedError(
                f"{where}: carries a personal model, which strategy '{self.plan.strategy}' "
                "keeps at the sites"
            )
        if msg.personal.size != self.size:
            raise UpdateRejectedError(
                f"{where}: personal model has {msg.personal.size} values, the model {self.size}"
            )
        if not np.all(np.isfinite(msg.personal)):
            raise UpdateRejectedError(f"{where}: personal model holds a non-finite value")

    # -- secure aggregation ----------------------------------------------------------------

    def _open_secure_sum(self, progress: RoundProgress) -> SecureRound:
        """Start the round's SecAgg session over the sites asked to train."""
        spec = self.strategy.secure
        if spec is None:
            raise ConfigError(f"run '{self.run_id}': no secure summation in this plan")
        members = [self.plan.site_index(s) for s in progress.requested]
        session = SecureRound.new(
            self.run_id, progress.round, progress.attempt, members, self._weight_scale()
        )
        length = self.size if self.private is not None else self.size + 1
        timeout = self.options.secure_stage_timeout_s
        ids = (self.run_id, progress.round, progress.attempt)
        detail: dict[str, Any] = {"members": progress.requested, "protocol": spec.label}
        if spec.kind == "encrypt":
            self.secure_sum = EncryptedSumCollector(
                session.members, length, session.session, timeout, progress.deadline, *ids
            )
        else:
            config = secagg_config(spec, members, length, session.session)
            self.secure_sum = SecureSumCollector(config, timeout, progress.deadline, *ids)
            detail["threshold"] = config.threshold
        self._event("secure_sum_opened", detail=detail)
        return session

    def _weight_scale(self) -> float:
        """A public bound on every site's aggregation weight (the simulator's max weight).

        From the training-set sizes the sites reported in their Hello; 1 when weighting
        is uniform or under DP (updates are summed unweighted).
        """
        if self.private is not None or self.strategy.weighting == "uniform":
            return 1.0
        sizes = [int(st.data.get("num_train", 0) or 0) for st in self.sites.values()]
        return float(max([*sizes, 1]))

    def _on_secure(self, env: Envelope) -> list[Outgoing]:
        site = env.sender
        collector, progress = self.secure_sum, self.current
        try:
            env.validate()
            session, attempt = session_of(env)
        except ProtocolError as exc:
            return self._reject(site, "malformed", str(exc))
        refusal = self._refusal(env, once_per_site=("secagg", attempt, step_of(env)))
        if refusal is not None:
            return [self._error(site, "rejected", refusal)]
        if (
            self.phase is not Phase.TRAINING
            or collector is None
            or progress is None
            or attempt != progress.attempt
            or session != progress.secure_session
        ):
            detail = "no secure aggregation of this session is open"
            return self._reject(site, "unexpected", detail)
        member = self.plan.site_index(site)
        try:
            if "num_samples" in env.header:  # the first message: keys, or the encrypted input
                progress.secure_meta[site] = _secure_meta(env)
            if step_of(env) in INPUT_STEPS:
                progress.secure_meta.setdefault(site, {})["nbytes"] = env.nbytes
                progress.secure_meta[site]["update_hash"] = vector_digest(env.vector)
            return self._secure_step(lambda c: c.receive(member, env, self._now))
        except ProtocolError as exc:  # this site's message is bad; the others go on
            progress.rejected[site] = str(exc)
            self._event("update_rejected", site, {"reason": str(exc)})
            answer = self._error(site, "secagg_rejected", str(exc))
            return [answer, *self._secure_drop(site, str(exc))]

    def _secure_drop(self, site: str, reason: str) -> list[Outgoing]:
        if site not in self.sites:
            return []
        member = self.plan.site_index(site)
        collector = self.secure_sum
        if collector is None or member not in collector.waiting:
            return []
        self._event("site_dropped", site, {"reason": reason})
        return self._secure_step(lambda c: c.drop(member, reason, self._now))

    def _secure_step(self, step: Callable[[SecureSum], list[Addressed]]) -> list[Outgoing]:
        """Run one step of the round's secure sum; forward its messages, finish when done."""
        collector, progress = self.secure_sum, self.current
        if collector is None or progress is None:
            return []
        try:
            replies = step(collector)
        except ProtocolError as exc:
            if not collector.aborted:
                raise  # a bad message: the caller rejects it, the session goes on
            self._event("secure_sum_aborted", detail={"reason": str(exc)})
            for member, why in collector.lost.items():
                progress.dropped.setdefault(self.plan.sites[member], why)
            return self._retry_round(progress)
        out = [Outgoing(self.plan.sites[member], env) for member, env in replies]
        return out + (self._finish_secure(progress, collector) if collector.done else [])

    def _finish_secure(self, progress: RoundProgress, collector: SecureSum) -> list[Outgoing]:
        """The sum is unmasked (or decrypted): its members are the round's contributors."""
        result = collector.outcome()
        for site in progress.requested:
            member = self.plan.site_index(site)
            meta = progress.secure_meta.get(site, {})
            if member in result.included:
                self._note_sample_epsilon(site, meta.get(SAMPLE_EPSILON))
                progress.accepted[site] = Contribution(
                    float(meta.get("weight", 1.0)),
                    int(meta.get("num_samples", 0)),
                    int(meta.get("nbytes", 0)),
                    str(meta.get("update_hash", "")),
                    float("nan"),  # the coordinator never sees the update itself
                    float(meta.get("train_loss", float("nan"))),
                )
                self._event(
                    "update_accepted",
                    site,
                    _json_safe({k: meta.get(k) for k in ("update_hash", "nbytes", "num_samples")}),
                )
            elif site not in progress.rejected and site not in progress.dropped:
                progress.dropped[site] = collector.lost.get(member, "left the secure sum")
        self._event(
            "secure_sum_completed",
            detail={
                "included": self._in_site_order(progress.accepted),
                "lost": len(collector.lost),
            },
        )
        aggregator = progress.aggregator
        if not isinstance(aggregator, SecureSumAggregator):
            raise ProtocolError(f"run '{self.run_id}': a secure sum finished a plain round")
        return self._close_round(
            progress, lambda: aggregator.release(result.total, len(result.included))
        )

    def _maybe_finish_training(self) -> list[Outgoing]:
        progress = self.current
        if self.phase is not Phase.TRAINING or progress is None or progress.pending:
            return []
        return self._close_round(progress, lambda: progress.aggregator.result().aggregate)

    def _close_round(
        self, progress: RoundProgress, aggregate: Callable[[], Aggregate]
    ) -> list[Outgoing]:
        """Retry a round with too few updates; else account local DP (each contributing
        site noised its own update) and complete it with its aggregate."""
        if len(progress.accepted) < max(self.min_updates, 1):
            return self._retry_round(progress)
        if self.private is not None and self.private.spec.mode == "local":
            for site in progress.accepted:
                self.private.record_local_release(site)
        return self._complete_round(progress, aggregate())

    def _complete_round(self, progress: RoundProgress, aggregate: Aggregate) -> list[Outgoing]:
        progress.release()
        self.secure_sum = None
        self.state = server_step(
            self.strategy,
            self.state,
            aggregate,
            len(self.plan.sites),
            context=progress.context,
            collected=progress.collected,
            # A folded mean exists for this step alone: the new model is written over it.
            spend=isinstance(progress.aggregator, FoldedMean),
        )
        for site in progress.accepted:
            self.contributed[site] = progress.round
        self.attempt = 0
        final = self.round >= self.plan.rounds
        every = self.plan.eval_every
        evaluate = final or bool(every and self.round % every == 0)
        self.completed = {**self._record_base(progress), "final": final}
        detail = {
            "round": progress.round,
            "participants": self._in_site_order(progress.accepted),
            "dropped": dict(progress.dropped),
            "rejected": dict(progress.rejected),
            "model_hash": vector_digest(self.state.params),
            **self._privacy_detail(),
        }
        self.current = None
        if evaluate:
            # The evaluation request tells sites the round counted: durable first.
            self.completed["event"] = _json_safe(detail)
            self._event("round_completed", detail=detail, snapshot=True)
            return self._start_eval(final)
        self._event("round_completed", detail=detail)
        return self._round_done({})

    def _record_base(self, progress: RoundProgress) -> dict[str, Any]:
        """The round's history record without its evaluation (kept until that arrives)."""
        return {
            "round": self.round,
            "participants": self._in_site_order(progress.accepted),
            "train_loss": progress.train_loss(),
            "upload_bytes": sum(c.nbytes for c in progress.accepted.values()),
            "download_bytes": progress.download_bytes,
            "seconds": self._now - progress.started,
            "site_upload_bytes": {
                s: progress.accepted[s].nbytes for s in self._in_site_order(progress.accepted)
            },
            "sampled": list(progress.sampled),
            "missing": self._missing(progress),
            "dropped": dict(progress.dropped),
            "rejected": dict(progress.rejected),
        }

    def _note_sample_epsilon(self, site: str, value: Any) -> None:
        """A site's DP-SGD epsilon so far (it accounts its own steps; it never decreases)."""
        if self.sample_epsilon is None or not isinstance(value, int | float):
            return
        if math.isfinite(value):
            self.sample_epsilon[site] = max(self.sample_epsilon[site], float(value))

    def _privacy_detail(self) -> dict[str, Any]:
        """Epsilon so far, at the plan's delta, for the round's events and history."""
        if self.private is None:
            return {}
        return {
            "epsilon": self.private.epsilon(),
            "delta": self.private.spec.delta,
            "noise_multiplier": self.private.noise_multiplier,
            "clip_norm": self.private.clip_norm,
        }

    def _retry_round(self, progress: RoundProgress) -> list[Outgoing]:
        progress.release()
        self.current = None
        self.secure_sum = None
        self.attempt += 1
        detail = {
            "attempt": progress.attempt,
            "accepted": len(progress.accepted),
            "needed": self.min_updates,
            "dropped": dict(progress.dropped),
            "rejected": dict(progress.rejected),
        }
        self._event("round_failed", detail=detail)
        if self.attempt >= self.options.max_attempts:
            self.phase = Phase.FAILED
            self.failure = (
                f"round {progress.round} got fewer than {self.min_updates} valid updates "
                f"in {self.attempt} attempts"
            )
            self._event("run_failed", detail={"reason": self.failure})
            return self._finish_messages()
        self.phase = Phase.WAITING
        return self._maybe_start_round()

    def _missing(self, progress: RoundProgress) -> dict[str, str]:
        """Sampled sites that did not contribute to the round, with why."""
        missing = {}
        for site in progress.sampled:
            if site in progress.accepted:
                continue
            if site in progress.rejected:
                missing[site] = f"update rejected: {progress.rejected[site]}"
            else:
                missing[site] = progress.dropped.get(site) or "did not contribute"
        return missing

    def _in_site_order(self, names: Mapping[str, Any] | list[str]) -> list[str]:
        return [s for s in self.plan.sites if s in names]

    # -- evaluation ------------------------------------------------------------------------

    def _start_eval(self, final: bool) -> list[Outgoing]:
        self.eval_started = self._now
        self.guard.open_round(self.round)
        ready = self.ready_sites()
        self.evaluation = EvalProgress(
            self.round, final, ready, self._now + self.options.eval_timeout_s
        )
        self.phase = Phase.EVALUATING
        if not ready:
            return self._maybe_finish_eval()
        return [
            Outgoing(
                site,
                EvalRequest(
                    self.run_id,
                    self.round,
                    self.state.params,
                    final=final,
                    deadline_s=self.options.eval_timeout_s,
                    contributed=self.contributed[site],
                ).to_envelope(),
            )
            for site in ready
        ]

    def _on_eval(self, env: Envelope, msg: EvalResult) -> list[Outgoing]:
        site = env.sender
        if not self._admit(env, once_per_site="eval"):
            return []
        ev = self.evaluation
        if self.phase is not Phase.EVALUATING or ev is None or site not in ev.pending:
            self._event("message_rejected", site, {"reason": "unexpected", "kind": env.kind})
            return []
        if "global" not in msg.stats or (
            ev.final and self.strategy.personal.active and "personal" not in msg.stats
        ):
            ev.missing[site] = f"evaluation lacks models: has {sorted(msg.stats)}"
        else:
            ev.results[site] = msg.stats
        return self._maybe_finish_eval()

    def _maybe_finish_eval(self) -> list[Outgoing]:
        ev = self.evaluation
        if self.phase is not Phase.EVALUATING or ev is None or self.completed is None or ev.pending:
            return []
        names = self._in_site_order(ev.results)
        for site, reason in ev.missing.items():
            self._event("eval_missing", site, {"reason": reason})
        global_stats = {s: ev.results[s]["global"] for s in names}
        if ev.final:
            if self.strategy.personal.active:
                self.final_eval = {s: ev.results[s]["personal"] for s in names}
                self.reference_evals = {"global": global_stats}
            else:
                self.final_eval = global_stats
        self.evaluation = None
        return self._round_done(global_stats)

    def _round_done(self, stats: dict[str, EvalStats]) -> list[Outgoing]:
        base = self.completed or {}
        self.completed = None
        pooled: dict[str, float] = {}
        if stats:
            values = list(stats.values())
            total = values[0]
            for s in values[1:]:
                total = total + s
            pooled = total.summary()
        seconds = float(base.get("seconds") or 0.0)
        if stats:  # the evaluation's time (since it was sent by this process)
            seconds += max(self._now - self.eval_started, 0.0)
        record = {
            "round": int(base.get("round", self.round)),
            "participants": list(base.get("participants", [])),
            "train_loss": base.get("train_loss"),
            "upload_bytes": base.get("upload_bytes", 0),
            "download_bytes": base.get("download_bytes", 0),
            "seconds": seconds,
            "site_metrics": {s: v.summary() for s, v in stats.items()},
            "pooled_metrics": pooled,
            "site_upload_bytes": dict(base.get("site_upload_bytes", {})),
        }
        if self.private is not None:
            record["epsilon"] = self.private.epsilon()
        if self.sample_epsilon is not None:
            record[SAMPLE_EPSILON] = dict(self.sample_epsilon)
        record["sampled"] = list(base.get("sampled", []))
        record["missing"] = dict(base.get("missing", {}))
        self.history.append(record)
        if record["missing"]:
            self._event(
                "round_short",
                detail={
                    "round": self.round,
                    "sampled": record["sampled"],
                    "contributed": record["participants"],
                    "missing": record["missing"],
                },
            )
        self._event(
            "round_finished",
            detail=_json_safe(
                {
                    "record": record,
                    "dropped": dict(base.get("dropped", {})),
                    "rejected": dict(base.get("rejected", {})),
                }
            ),
            snapshot=True,
        )
        if self.round >= self.plan.rounds:
            self.phase = Phase.FINISHED
            model_hash = vector_digest(self.state.params)
            self._event("run_finished", detail={"model_hash": model_hash, "rounds": self.round})
            return self._finish_messages()
        self.phase = Phase.WAITING
        return self._maybe_start_round()

    # -- replies ---------------------------------------------------------------------------

    def _finished_message(self, site: str) -> Outgoing:
        status = "finished" if self.phase is Phase.FINISHED else "failed"
        message = RunFinished(
            self.run_id,
            self.round,
            status,
            vector_digest(self.state.params),
            self.failure,
            contributed=self.contributed[site],
        )
        return Outgoing(site, message.to_envelope())

    def _finish_messages(self) -> list[Outgoing]:
        return [self._finished_message(s) for s, st in self.sites.items() if st.connected]

    def _decode_wire(self, site: str, msg: UpdateMessage) -> FloatVector:
        """Decode a compressed delta, after checking it was encoded as the plan says."""
        wire = msg.wire
        if wire is None:
            return msg.delta
        stage = compression_stage(self.strategy.upload.stages)
        where = f"update from site '{site}' for round {msg.round}"
        if stage is None or wire.stage != stage_dict(stage):
            agreed = "no compression" if stage is None else stage_dict(stage)
            raise UpdateRejectedError(
                f"{where}: encoded with {wire.stage}, but the plan agreed {agreed}"
            )
        if wire.length != self.size:
            raise UpdateRejectedError(
                f"{where}: encodes {wire.length} values, the model has {self.size}"
            )
        try:
            return from_wire(wire.data, stage, wire.length)
        except ValueError as exc:
            raise UpdateRejectedError(f"{where}: malformed {stage.kind} payload: {exc}") from exc

    def _verdict(self, site: str, msg: UpdateMessage, accepted: bool, reason: str) -> Outgoing:
        verdict = UpdateVerdict(self.run_id, msg.round, msg.attempt, accepted, reason)
        return Outgoing(site, verdict.to_envelope())

    def _reject(self, site: str, reason: str, detail: str) -> list[Outgoing]:
        """Log a refused message and tell its sender why (``reason`` is the error code)."""
        self._event("message_rejected", site, {"reason": reason, "detail": detail})
        return [self._error(site, reason, detail)]

    def _error(self, site: str, code: str, message: str) -> Outgoing:
        return Outgoing(site, ErrorReport(self.run_id, self.round, code, message).to_envelope())

    def _event(
        self,
        kind: str,
        site: str = "",
        detail: dict[str, Any] | None = None,
        *,
        snapshot: bool = False,
    ) -> None:
        taken = self.checkpoint() if snapshot else None
        self._events.append(
            RuntimeEvent(kind, self.run_id, self.round, site, dict(detail or {}), self._now, taken)
        )


COORDINATOR_ROUTES: Router[CoordinatorMachine, Outgoing] = Router("coordinator", SCHEMAS)
"""What the coordinator does with each site message. Today's handlers take their kind in
every phase and check the phase themselves, after the replay guard (that order is part of
the protocol: a replayed update is refused as a replay whatever the phase)."""
COORDINATOR_ROUTES.on(SESSION, ANY, Hello.KIND, CoordinatorMachine._on_hello)
COORDINATOR_ROUTES.on(SESSION, ANY, ApprovalStatus.KIND, CoordinatorMachine._on_approval)
COORDINATOR_ROUTES.on(SESSION, ANY, ErrorReport.KIND, CoordinatorMachine._on_error)
COORDINATOR_ROUTES.on(TRAIN, ANY, UpdateMessage.KIND, CoordinatorMachine._on_update)
COORDINATOR_ROUTES.on(EVALUATE, ANY, EvalResult.KIND, CoordinatorMachine._on_eval)
for _kind in (SECAGG, HE):
    COORDINATOR_ROUTES.on(TRAIN, ANY, _kind, lambda m, env, _: m._on_secure(env))
