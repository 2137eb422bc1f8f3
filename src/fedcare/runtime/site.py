"""A hospital's side of a deployed run, as a sans-IO state machine.

The site agent (a driver) feeds the machine the coordinator's envelopes and sends back
what it returns. The machine checks its data first, refuses any plan its owner has not
approved (answering "waiting for approval HASH" until ``fedcare site approve HASH`` or an
allow rule), trains with the approved plan's hyper-parameters only, and keeps the
algorithm's per-site state (SCAFFOLD's control variate, personal heads and models, top-k
residuals) at the site. Torch stays out: the local work (training and evaluation on this
site's rows) is injected, built from the approved plan.

A new state is *pending* until the coordinator reports (``contributed``) that the update it
came with went into an aggregate; otherwise it is dropped and the site trains the retried or
resumed round again from its committed state, exactly as the simulator would.

A site with a privacy budget (a :class:`~fedcare.privacy.client_level.SiteBudget` over its
persistent ledger) refuses a plan whose whole run would not fit what is left, before its
owner is even asked, and charges the ledger with the job's running epsilon before it trains
each round; a round that would overrun the budget is refused, not trained. Both refusals
reach the coordinator as ``budget_exceeded`` error reports.

A run of a deployed study arrives with the whole study plan: the site computes both hashes
itself, accepts the run only if its plan is one of the study's runs, and asks its owner to
approve the study once. Its budget check then counts this run and every run after it, so
a study that cannot finish within the budget is refused before it starts, not halfway.
After a run that others follow, the site stays (or reconnects) for the next one.

Drivers: persist :meth:`checkpoint` after each call that returns an update, before sending
it, so a site that crashes and restarts still holds the state its counted update came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.algorithms.strategy import Strategy
from fedcare.core.errors import (
    ConfigError,
    FedcareError,
    PrivacyBudgetExceededError,
    ProtocolError,
)
from fedcare.core.metrics import EvalStats
from fedcare.core.records import LocalObjective, LocalOutcome, ServerState, SiteState, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.core.vectors import FloatVector
from fedcare.he.ckks import CkksKeys
from fedcare.privacy.budget import JobRef
from fedcare.privacy.client_level import (
    JobCost,
    JobPrivacy,
    SiteBudget,
    privatise_at_site,
    record_level_cost,
)
from fedcare.privacy.sample_level import SiteSampleCost
from fedcare.rounds import site_step
from fedcare.runtime.approvals import Decision, plan_hash
from fedcare.runtime.encrypted_round import HE, decrypt_request, encrypted_update
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    ALREADY_COUNTED,
    BUDGET_EXCEEDED,
    EVALUATE,
    NO_RUN,
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
    WireDelta,
    vector_digest,
)
from fedcare.runtime.model_allow import (
    MODEL_NOT_ALLOWED,
    ModelAllowList,
    ModelNotAllowedError,
    model_lines,
    plan_models,
)
from fedcare.runtime.replay import ReplayGuard
from fedcare.runtime.rounds import RunPlan, StudyPlan
from fedcare.runtime.router import ANY, Handler, Router, Unrouted
from fedcare.runtime.secure_round import secagg_config, secure_input
from fedcare.runtime.secure_wire import SECAGG, client_envelope, parse_server, session_of, step_of
from fedcare.secagg.client import SecAggClient
from fedcare.transforms.pipeline import compression_stage, stage_dict, to_wire

BoolMask = npt.NDArray[np.bool_]


class SitePhase(Enum):
    STARTING = "starting"  # Hello not sent yet
    WAITING_PLAN = "waiting_plan"
    WAITING_APPROVAL = "waiting_approval"
    READY = "ready"
    FINISHED = "finished"
    REFUSED = "refused"  # the local data failed its check: nothing runs


@dataclass(frozen=True)
class DataCheck:
    """The site's data checked against the study schema, before anything runs."""

    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)  # counts and shapes, no records
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainTask:
    """One local training job, keyed like the simulator's: (seed, purpose, round, site)."""

    round: int
    site_index: int
    seed: int
    start: FloatVector
    objective: LocalObjective
    spec: TrainSpec
    purpose: str = "batches"  # "misc" for personal passes and fine-tuning
    start_loss: bool = False  # also report the loss at ``start`` on the training rows


class LocalWork(Protocol):
    """Training and evaluation on this site's own rows (see fedcare.net.site_training)."""

    @property
    def num_params(self) -> int: ...

    def train(self, task: TrainTask) -> LocalOutcome: ...

    def evaluate(self, params: FloatVector) -> EvalStats: ...

    def local_mask(self, kind: str) -> BoolMask: ...


WorkFactory = Callable[[RunPlan], LocalWork]


class Approvals(Protocol):
    """What the machine needs of :class:`fedcare.runtime.approvals.ApprovalStore`."""

    def request(self, plan: dict[str, Any], from_: str = "") -> Decision: ...

    def decide(self, hash: str, plan: dict[str, Any] | None = None) -> Decision: ...

    def request_member(
        self, plan: dict[str, Any], study: dict[str, Any], from_: str = ""
    ) -> Decision: ...

    def decide_member(self, plan: dict[str, Any], study: dict[str, Any]) -> Decision: ...


@dataclass(frozen=True)
class Offer:
    """A plan waiting for its owner: the run's plan, its hash, and the study it is part of."""

    plan: dict[str, Any]
    hash: str
    study: dict[str, Any] | None = None

    def decide(self, approvals: Approvals) -> Decision:
        if self.study is None:
            return approvals.decide(self.hash, self.plan)
        return approvals.decide_member(self.plan, self.study)


@dataclass(frozen=True)
class SiteEvent:
    """For the site's terminal and its own audit copy."""

    kind: str
    run_id: str
    round: int
    detail: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0


@dataclass
class _Pending:
    round: int
    state: SiteState


def _checked_hash(document: dict[str, Any], announced: str, what: str) -> str:
    """The document's hash, which must be the one the coordinator announced with it."""
    computed = plan_hash(document)
    if computed != announced:
        raise ProtocolError(f"{what} announced hash {announced} but hashes to {computed}")
    return computed


def _unprefixed(tensors: dict[str, FloatVector], prefix: str) -> SiteState:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


class SiteMachine:
    """One site's protocol state; ``name`` is its certificate identity."""

    def __init__(
        self,
        name: str,
        approvals: Approvals,
        data: DataCheck,
        work: WorkFactory,
        *,
        coordinator: str | None = None,
        budget: SiteBudget | None = None,
        he_keys: CkksKeys | None = None,
        models: ModelAllowList | None = None,
    ) -> None:
        self.name = name
        self.approvals = approvals
        self.data = data
        self.work_factory = work
        self.coordinator = coordinator  # expected sender identity; None accepts any
        self.budget = budget
        self.he_keys = he_keys  # the CKKS key set the hospitals share (never the coordinator)
        self.models = models  # import paths this site may import; None: built-in models only
        self.job_cost: JobCost | None = None  # what the approved plan spends per record
        self._costs: dict[str, JobPrivacy | None] = {}  # client-level DP, by plan hash
        self._budget_costs: dict[str, JobCost | None] = {}
        self.phase = SitePhase.STARTING
        self.run_id = NO_RUN
        self.plan: RunPlan | None = None
        self.plan_hash = ""
        self.offered: Offer | None = None  # plan waiting for approval
        self.study: StudyPlan | None = None  # the study the current run belongs to, if any
        self.strategy: Strategy | None = None
        self.work: LocalWork | None = None
        self.mask: BoolMask | None = None
        self.state: SiteState = {}
        self.committed_round = -1  # last round whose update is in an aggregate
        self.pending: _Pending | None = None
        self.last_round = 0
        self.secure_turn: tuple[int, int, bytes] | None = None  # (round, attempt, session)
        self.secagg: SecAggClient | None = None  # this site's part in the round's SecAgg
        self.guard = ReplayGuard(NO_RUN)
        self._events: list[SiteEvent] = []
        self._now = 0.0

    # -- public surface --------------------------------------------------------------------

    def start(self, now: float) -> list[Envelope]:
        """The greeting to send on every (re)connection."""
        self._now = now
        if not self.data.ok:
            self.phase = SitePhase.REFUSED
            self._event("data_invalid", {"problems": self.data.problems})
        elif self.phase is not SitePhase.FINISHED:
            self.phase = SitePhase.WAITING_PLAN
        hello = Hello(
            self.data.ok, self.data.summary, self.data.problems, self.run_id, self.last_round
        )
        return [hello.to_envelope()]

    def drain_events(self) -> list[SiteEvent]:
        events, self._events = self._events, []
        return events

    def handle(self, env: Envelope, now: float) -> list[Envelope]:
        """React to one coordinator message; returns the replies."""
        self._now = now
        if self.coordinator is not None and env.sender != self.coordinator:
            return self._refuse(env, "unknown_sender", f"'{env.sender}' is not the coordinator")
        try:
            route = SITE_ROUTES.route(env, self.phase.value)
        except ProtocolError as exc:
            return self._refuse(env, "malformed", str(exc))
        if isinstance(route, Unrouted):
            if self.phase is not SitePhase.READY:
                return self._refuse(env, "not_ready", f"site is {self.phase.value}")
            if self._replayed(env):
                return []
            return self._refuse(env, "unexpected", f"a coordinator may not send '{env.kind}'")
        return route(self, env)

    def _replayed(self, env: Envelope, *, any_run: bool = False) -> bool:
        """The replay guard refuses ``env`` (logged): a copy, or of another run (unless
        ``any_run``: a plan may start a new run)."""
        rejection = self.guard.check(env, round_bound=False, any_run=any_run)
        if rejection is not None:
            self._event(
                "message_rejected", {"reason": rejection.reason, "detail": rejection.detail}
            )
        return rejection is not None

    def _on_coordinator_error(self, env: Envelope, report: ErrorReport) -> list[Envelope]:
        self._event("coordinator_error", {"code": report.code, "message": report.message})
        return []

    def _on_run_finished(self, env: Envelope, message: RunFinished) -> list[Envelope]:
        if self.run_id == NO_RUN:
            return self._on_run_ended_before_joining(env, message)
        if self._replayed(env):
            return []
        self._settle(message.contributed)
        following = self._runs_after() if message.status == "finished" else 0
        self.phase = SitePhase.WAITING_PLAN if following else SitePhase.FINISHED
        detail: dict[str, Any] = {"status": message.status, "model_hash": message.model_hash}
        if following:
            detail["next"] = f"{following} more run(s) of study '{self.study_name}'"
        self._event("run_finished", detail)
        return []

    def _on_run_ended_before_joining(self, env: Envelope, message: RunFinished) -> list[Envelope]:
        """The coordinator (authenticated by mTLS) stopped a run this site never received a
        plan for, e.g. too few hospitals passed their data checks. A failed run has no next
        run to wait for, so the site stops instead of reconnecting forever; a finished one
        is followed by the study's next plan."""
        if message.status == "finished":
            return []
        self.phase = SitePhase.FINISHED
        self._event(
            "run_finished",
            {
                "status": message.status,
                "run_id": env.run_id,
                "detail": "the coordinator stopped the run before this site received its plan",
            },
        )
        return []

    def tick(self, now: float) -> list[Envelope]:
        """Re-ask the approval store while a plan waits (the owner approves from a terminal)."""
        self._now = now
        if self.phase is not SitePhase.WAITING_APPROVAL or self.offered is None:
            return []
        offer = self.offered
        decision = offer.decide(self.approvals)
        return self._apply_decision(offer, decision) if decision.approved else []

    def checkpoint(self) -> tuple[dict[str, FloatVector], dict[str, Any]]:
        """(arrays, JSON-safe meta): the site's algorithm state, committed and pending."""
        tensors = {f"committed/{k}": v for k, v in self.state.items()}
        meta: dict[str, Any] = {
            "run_id": self.run_id,
            "plan_hash": self.plan_hash,
            "committed_round": self.committed_round,
            "last_round": self.last_round,
            "pending_round": None,
        }
        if self.pending is not None:
            tensors.update({f"pending/{k}": v for k, v in self.pending.state.items()})
            meta["pending_round"] = self.pending.round
        return tensors, meta

    def restore(self, tensors: dict[str, FloatVector], meta: dict[str, Any]) -> None:
        """Load a checkpoint written by :meth:`checkpoint` (after a crash and restart)."""
        self.run_id = str(meta.get("run_id", NO_RUN))
        self.plan_hash = str(meta.get("plan_hash", ""))
        self.committed_round = int(meta.get("committed_round", -1))
        self.last_round = int(meta.get("last_round", 0))
        self.guard = ReplayGuard(self.run_id)
        self.state = _unprefixed(tensors, "committed/")
        self.pending = None
        if meta.get("pending_round") is not None:
            self.pending = _Pending(int(meta["pending_round"]), _unprefixed(tensors, "pending/"))

    @property
    def study_name(self) -> str:
        return self.study.study if self.study is not None else ""

    def _runs_after(self) -> int:
        """How many runs of the approved study follow the current one (0 without a study)."""
        if self.study is None or not self.plan_hash:
            return 0
        return len(self.study.after(self.plan_hash))

    # -- plan and approval -----------------------------------------------------------------

    def _on_plan(self, env: Envelope, message: JobPlan) -> list[Envelope]:
        if not self.data.ok:
            problems = "; ".join(self.data.problems) or "data check failed"
            return self._refuse(env, "data_invalid", problems)
        if self._replayed(env, any_run=True):
            return []
        try:
            computed = _checked_hash(message.plan, message.plan_hash, "job plan")
            plan = RunPlan.from_dict(message.plan)
            plan.site_index(self.name)
            study = self._study_of(message, computed)
            imports = self._model_lines(message.study or message.plan)
        except ModelNotAllowedError as exc:  # before approval is asked: nothing was imported
            self._event("model_refused", {"plan_hash": computed, "detail": str(exc)})
            return [
                ErrorReport(message.run_id, env.round, MODEL_NOT_ALLOWED, str(exc)).to_envelope()
            ]
        except FedcareError as exc:
            return self._refuse(env, "plan_refused", str(exc))
        if message.run_id != self.run_id:
            self._new_run(message.run_id)
        self.study = study
        refusal = self._over_budget(plan, computed, message.round)
        if refusal is not None:
            return refusal
        offer = Offer(message.plan, computed, message.study)
        if message.study is None:
            decision = self.approvals.request(message.plan, from_=env.sender)
        else:
            decision = self.approvals.request_member(message.plan, message.study, env.sender)
        if not decision.approved:
            self.phase = SitePhase.WAITING_APPROVAL
            self.offered = offer
            waiting: dict[str, Any] = {
                "plan_hash": computed,
                "detail": decision.reason,
                "models": imports,
            }
            if study is not None:
                waiting.update(study_hash=study.hash, study=study.study, runs=study.describe())
            self._event("waiting_approval", waiting)
            status = ApprovalStatus(message.run_id, message.round, computed, False, decision.reason)
            return [status.to_envelope()]
        return self._apply_decision(offer, decision, recheck=False)

    def _study_of(self, message: JobPlan, run_hash: str) -> StudyPlan | None:
        """The study the plan says it belongs to, checked here: its hash recomputed, every
        run parsed, and this run's hash found among them (ConfigError/ProtocolError if not)."""
        if message.study is None:
            return None
        _checked_hash(message.study, message.study_hash, "study plan")
        study = StudyPlan.from_dict(message.study)
        study.position(run_hash)
        return study

    def _model_lines(self, plan: dict[str, Any]) -> list[str]:
        """For each model the plan (or every run of its study) builds: built in, or which
        module it imports; ModelNotAllowedError for a module off the site's allow-list."""
        return model_lines(plan_models(plan), self.models)

    def _apply_decision(
        self, offer: Offer, decision: Decision, *, recheck: bool = True
    ) -> list[Envelope]:
        plan, hash_ = RunPlan.from_dict(offer.plan), offer.hash
        refusal = self._over_budget(plan, hash_, self.last_round) if recheck else None
        if refusal is not None:  # another job may have spent the budget while it waited
            return refusal
        try:
            self._model_lines(offer.plan)  # the list may have changed while it waited
        except ModelNotAllowedError as exc:
            self._event("model_refused", {"plan_hash": hash_, "detail": str(exc)})
            self.offered = None
            return self._report(0, MODEL_NOT_ALLOWED, str(exc))
        try:
            secure = plan.build_strategy().secure
            if secure is not None and secure.kind == "encrypt" and self.he_keys is None:
                raise ConfigError(
                    "the plan encrypts updates with CKKS but this site has no key set; start "
                    "the agent with --he-keys (the file the hospitals share)"
                )
            work = self.work_factory(plan)
            if work.num_params <= 0:
                raise ProtocolError("the plan's model has no parameters")
        except FedcareError as exc:
            return self._report(0, "plan_incompatible", str(exc))
        self.plan, self.plan_hash, self.work, self.offered = plan, hash_, work, None
        self.job_cost = self._budget_costs.get(hash_)
        self.strategy = plan.build_strategy()
        kind = self.strategy.personal.mask_kind
        self.mask = work.local_mask(kind) if kind else None
        self.phase = SitePhase.READY
        self._event("approved", {"plan_hash": hash_, "detail": decision.reason})
        status = ApprovalStatus(self.run_id, self.last_round, hash_, True, decision.reason)
        return [status.to_envelope()]

    def _cost(self, plan: RunPlan, hash_: str) -> JobPrivacy | None:
        if hash_ not in self._costs:  # calibrating a target epsilon takes a moment
            dp = plan.dp
            self._costs[hash_] = (
                None if dp is None else JobPrivacy.of(dp, plan.participation.fraction, plan.rounds)
            )
        return self._costs[hash_]

    def _record_cost(self, plan: RunPlan, hash_: str) -> JobCost | None:
        """What the plan spends of this site's per-record budget (client-level and DP-SGD)."""
        if hash_ not in self._budget_costs:
            costs: list[JobCost] = []
            client = self._cost(plan, hash_)
            if client is not None:
                costs.append(client)
            sample_dp = plan.build_strategy().sample_dp
            if sample_dp is not None:
                rows = int(self.data.summary.get("num_train", 0) or 0)
                costs.append(SiteSampleCost.of(sample_dp, rows, plan.local_spec, plan.rounds))
            self._budget_costs[hash_] = record_level_cost(costs)
        return self._budget_costs[hash_]

    def _over_budget(self, plan: RunPlan, hash_: str, round_: int) -> list[Envelope] | None:
        """None if the whole plan fits this site's budget, else the refusal to send."""
        if self.budget is None:
            return None
        try:
            cost = self._record_cost(plan, hash_)
            self.budget.admit(JobRef(self.run_id, hash_), cost)
            self._admit_rest_of_study(plan, hash_, cost)
        except FedcareError as exc:  # over budget, a broken ledger, an unreachable epsilon
            self.phase, self.offered = SitePhase.WAITING_PLAN, None
            self._event("budget_refused", {"plan_hash": hash_, "detail": str(exc)})
            return self._report(round_, BUDGET_EXCEEDED, str(exc))
        remaining = self.budget.remaining()
        self._event(
            "budget_admitted",
            {
                "plan_hash": hash_,
                "planned_epsilon": cost.planned_epsilon if cost else None,
                "remaining_epsilon": remaining[0],
            },
        )
        return None

    def _admit_rest_of_study(self, plan: RunPlan, hash_: str, cost: JobCost | None) -> None:
        """The runs of a study add up (basic composition, as the ledger counts jobs): this
        run and every run after it must fit what is left now, so a study the budget cannot
        pay for is refused before it starts rather than stopped halfway. Runs already done
        are in the ledger as jobs of their own."""
        if self.budget is None or self.study is None or cost is None:
            return
        later = self.study.after(hash_)
        if not later:
            return
        epsilon, delta = cost.planned_epsilon, cost.delta
        for run in later:
            run_cost = self._record_cost(run, run.hash)
            if run_cost is None:
                raise PrivacyBudgetExceededError(
                    f"site '{self.name}': run {self.study.position(run.hash) + 1} of study "
                    f"'{self.study.study}' ({run.strategy}, seed {run.seed}) has no differential "
                    "privacy, so its epsilon is unbounded; this site enforces a budget"
                )
            epsilon, delta = epsilon + run_cost.planned_epsilon, delta + run_cost.delta
        try:
            self.budget.ledger.check_can_start(JobRef(self.run_id, hash_), epsilon, delta)
        except PrivacyBudgetExceededError as exc:
            raise PrivacyBudgetExceededError(
                f"study '{self.study.study}': this run and the {len(later)} after it plan to "
                f"spend epsilon={epsilon:.6g}, delta={delta:.3g} together, more than is left: "
                f"{exc}"
            ) from exc

    def _charge(self, round_: int) -> list[Envelope] | None:
        """Charge the ledger for this round before training; the refusal if it cannot."""
        if self.budget is None:
            return None
        try:
            if self.job_cost is None:  # admit() refuses a plan without DP; never train one
                raise ProtocolError(f"site '{self.name}' has a budget but no DP cost for the job")
            epsilon = self.budget.charge_round(
                JobRef(self.run_id, self.plan_hash), self.job_cost, round_
            )
        except FedcareError as exc:
            self._event("budget_exhausted", {"round": round_, "detail": str(exc)})
            return self._report(round_, BUDGET_EXCEEDED, str(exc))
        self._event("budget_charged", {"round": round_, "epsilon": epsilon})
        return None

    def _new_run(self, run_id: str) -> None:
        """A different run: algorithm state starts afresh."""
        self.state, self.pending, self.committed_round, self.last_round = {}, None, -1, 0
        self.run_id = run_id
        self.guard = ReplayGuard(run_id)

    def _settle(self, contributed: int) -> None:
        """Commit the pending state if its update counted, else drop it."""
        if self.pending is None:
            return
        if self.pending.round == contributed:
            self.state, self.committed_round = self.pending.state, contributed
            self._event("state_committed", {"round": contributed})
        self.pending = None

    # -- training and evaluation -----------------------------------------------------------

    def _ready(self) -> tuple[RunPlan, Strategy, LocalWork]:
        if self.plan is None or self.strategy is None or self.work is None:
            raise ProtocolError(f"site '{self.name}' has no approved plan")
        return self.plan, self.strategy, self.work

    def _on_train(self, req: TrainRequest) -> list[Envelope]:
        plan, strategy, work = self._ready()
        index = plan.site_index(self.name)
        problem, code = "", "train_refused"
        if req.plan_hash != self.plan_hash:
            problem = f"request names plan {req.plan_hash}, the approved plan is {self.plan_hash}"
        elif req.seed != plan.seed or req.site_index != index:
            problem = (
                f"request has seed {req.seed} and site index {req.site_index}; the approved "
                f"plan says seed {plan.seed} and index {index}"
            )
        elif not req.round < plan.rounds:
            problem = f"round {req.round} is beyond the plan's {plan.rounds} rounds"
        elif req.round <= self.committed_round:
            problem = f"round {req.round} is late: round {self.committed_round} already counted"
            code = ALREADY_COUNTED
        elif req.params.size != work.num_params:
            problem = f"model has {req.params.size} values, the plan's model {work.num_params}"
        elif (strategy.secure is None) != (req.secure is None):
            problem = (
                "the request opens no secure sum but the approved plan aggregates securely"
                if req.secure is None
                else "the request opens a secure sum the approved plan does not have"
            )
        elif req.secure is not None and index not in req.secure.members:
            problem = f"site #{index} is not a member of the round's secure sum"
        else:
            problem = self._context_problem(req, strategy, len(plan.sites), work.num_params)
        if problem:
            return self._report(req.round, code, problem)
        self._settle(req.contributed)
        refusal = self._charge(req.round)
        if refusal is not None:
            return refusal
        try:
            update = self._train(req, plan, strategy, work, index)
        except FedcareError as exc:
            self._event("train_failed", {"round": req.round, "error": str(exc)})
            return self._report(req.round, "train_failed", str(exc))
        self.last_round = req.round
        if strategy.secure is not None:
            return self._join_secure_sum(req, update, index)
        env = update.to_envelope()
        self._event(
            "update_sent",
            {"round": req.round, "attempt": req.attempt, "update_hash": vector_digest(env.vector)},
        )
        return [env]

    def _train(
        self, req: TrainRequest, plan: RunPlan, strategy: Strategy, work: LocalWork, index: int
    ) -> UpdateMessage:
        """The round at this site through the round core's site steps, the simulator's own:
        the training task, the upload (client rule, DP at the site, upload stages, what stays
        local), then the strategy's personal pass, if it has one."""
        server = ServerState(round=req.round, params=req.params, arrays=dict(req.arrays))
        spec = strategy.local_spec(plan.spec)
        site_plan = site_step.SiteRound(strategy, spec, server, len(req.sampled), self.mask)
        task = site_step.training_task(site_plan, self.state)
        outcome = work.train(self._task(task, req.round, index, plan.seed, spec))
        dp = plan.dp
        privatise = None
        if dp is not None and dp.mode != "central":
            cost = self._cost(plan, self.plan_hash)
            privatise = partial(
                privatise_at_site,
                dp,
                noise_multiplier=cost.noise_multiplier if cost is not None else 0.0,
                clip_norm=dp.clip_norm,
                cohort=len(req.sampled),
            )  # noise from the OS CSPRNG: the coordinator knows the plan's seed
        compress = SeedStream(plan.seed).generator("compress", site_plan.round_index, index)
        state, upload = site_step.finish_training(
            site_plan, self.state, outcome, compress_rng=compress, privatise=privatise
        )
        personal = strategy.personal.personal_pass
        trained: FloatVector | None = None
        if personal is not None:
            own = site_step.personal_task(personal, req.site_context, server, state)
            trained = work.train(self._task(own, req.round, index, plan.seed, spec)).params
            state = site_step.keep_personal(state, trained)
        self.pending = _Pending(req.round, state)
        message = UpdateMessage.from_update(
            self.run_id, req.round, req.attempt, upload.update, outcome.num_samples
        )
        if personal is not None and personal.collects:  # the coordinator keeps it (MOCHA)
            message = replace(message, personal=trained)
        stage = compression_stage(strategy.upload.stages)
        if upload.encoded is None or stage is None:
            return message
        wire = WireDelta(to_wire(upload.encoded), stage_dict(stage), int(upload.update.delta.size))
        return replace(message, wire=wire)

    @staticmethod
    def _context_problem(
        req: TrainRequest, strategy: Strategy, num_sites: int, num_params: int
    ) -> str:
        """Why the request's site context is not what the plan's personal pass sends
        (its entries, each of the size the pass gives it), or ""."""
        layout = site_step.site_context_layout(strategy, num_sites)
        found = req.site_context
        if found.keys() != layout.keys():
            return (
                f"site context has entries {sorted(found)}, the plan's strategy sends "
                f"{sorted(layout)}"
            )
        for name, size in layout.items():
            want = num_params if size is None else size
            if found[name].size != want:
                return f"site context entry '{name}' has {found[name].size} values, expected {want}"
            if not np.all(np.isfinite(found[name])):
                return f"site context entry '{name}' holds a non-finite value"
        return ""

    @staticmethod
    def _task(
        task: site_step.TrainingTask, round_: int, index: int, seed: int, spec: TrainSpec
    ) -> TrainTask:
        """A round core task as this site's local work runs it, keyed like the simulator's."""
        return TrainTask(
            round=round_,
            site_index=index,
            seed=seed,
            start=task.start,
            objective=task.objective,
            spec=spec,
            purpose=task.purpose,
            start_loss=task.start_loss,
        )

    def _join_secure_sum(
        self, req: TrainRequest, update: UpdateMessage, index: int
    ) -> list[Envelope]:
        """Start this site's SecAgg client on its update; its keys go out with its counts."""
        plan, strategy, _ = self._ready()
        secure = req.secure
        if secure is None or strategy.secure is None:
            raise ProtocolError("no secure sum was opened for this round")
        private = plan.dp is not None
        if not private and update.weight > secure.weight_scale * (1 + 1e-9):
            problem = (
                f"weight {update.weight:g} exceeds the round's public weight scale "
                f"{secure.weight_scale:g}; it would be clipped inside the secure sum"
            )
            return self._report(req.round, "train_refused", problem)
        vector = secure_input(update.delta, update.weight, secure.weight_scale, private=private)
        meta = {
            "weight": update.weight,
            "num_samples": update.num_samples,
            "train_loss": float(update.metrics.get("train_loss", float("nan"))),
        }
        if "sample_epsilon" in update.metrics:  # its DP-SGD spend, reported as in the clear
            meta["sample_epsilon"] = float(update.metrics["sample_epsilon"])
        if strategy.secure.kind == "encrypt":
            return self._encrypted_update(req, vector, meta)
        try:
            config = secagg_config(strategy.secure, secure.members, vector.size, secure.session)
            client = SecAggClient(config, index, vector)
            messages = client.start()
        except FedcareError as exc:
            return self._report(req.round, "secagg_failed", str(exc))
        self.secagg = client
        self.secure_turn = (req.round, req.attempt, secure.session)
        self._event("secure_sum_joined", {"round": req.round, "members": len(secure.members)})
        return [client_envelope(m, self.run_id, req.round, req.attempt, **meta) for m in messages]

    def _encrypted_update(
        self, req: TrainRequest, vector: FloatVector, meta: dict[str, Any]
    ) -> list[Envelope]:
        """CKKS: encrypt the secure input under the hospitals' shared key set."""
        if self.he_keys is None or req.secure is None:
            raise ProtocolError("an encrypted update needs the CKKS key set and a session")
        try:
            env = encrypted_update(
                self.he_keys,
                vector,
                session=req.secure.session,
                run_id=self.run_id,
                round_=req.round,
                attempt=req.attempt,
                **meta,
            )
        except FedcareError as exc:
            return self._report(req.round, "encrypt_failed", str(exc))
        self.secure_turn = (req.round, req.attempt, req.secure.session)
        self._event("update_sent", {"round": req.round, "attempt": req.attempt, "encrypted": True})
        return [env]

    def _on_secure(self, env: Envelope) -> list[Envelope]:
        """A step of the round's secure sum; a message that fails a check is refused."""
        turn, plan = self.secure_turn, self.plan
        if self.phase is not SitePhase.READY or turn is None or plan is None:
            return self._refuse(env, "unexpected", "this site is in no secure sum")
        if self._replayed(env):
            return []
        try:
            env.validate()
            session, attempt = session_of(env)
            if (env.round, attempt, session) != turn:
                raise ProtocolError(f"{env.kind} message of another round, attempt or session")
            if env.kind == HE:
                return self._decrypt(env)
            if self.secagg is None:
                raise ProtocolError("this site runs no SecAgg client this round")
            message = parse_server(env, plan.site_index(self.name))
            replies = self.secagg.handle(message)
        except FedcareError as exc:
            return self._refuse(env, f"{env.kind}_refused", str(exc))
        if step_of(env) == "forwarded_shares":
            self._event("update_sent", {"round": env.round, "attempt": attempt, "masked": True})
        return [client_envelope(m, self.run_id, env.round, attempt) for m in replies]

    def _decrypt(self, env: Envelope) -> list[Envelope]:
        """CKKS: open the round's aggregate (a sum of two updates at least) for the coordinator."""
        if self.he_keys is None or step_of(env) != "decrypt":
            raise ProtocolError("this site holds no encrypted sum to open")
        reply = decrypt_request(env, self.he_keys, self.name)
        self._event(
            "aggregate_decrypted", {"round": env.round, "summands": reply.header["summands"]}
        )
        return [reply]

    def _on_verdict(self, verdict: UpdateVerdict) -> list[Envelope]:
        kind = "update_accepted" if verdict.accepted else "update_rejected"
        self._event(kind, {"round": verdict.round, "reason": verdict.reason})
        return []

    def _on_eval(self, req: EvalRequest) -> list[Envelope]:
        plan, strategy, work = self._ready()
        if req.params.size != work.num_params:
            problem = f"model has {req.params.size} values, the plan's model {work.num_params}"
            return self._report(req.round, "eval_refused", problem)
        self._settle(req.contributed)
        try:
            stats = {"global": work.evaluate(req.params)}
            if req.final and strategy.personal.active:
                stats["personal"] = work.evaluate(self._personal_model(req, plan, strategy, work))
        except FedcareError as exc:
            return self._report(req.round, "eval_failed", str(exc))
        return [EvalResult(self.run_id, req.round, stats).to_envelope()]

    def _personal_model(
        self, req: EvalRequest, plan: RunPlan, strategy: Strategy, work: LocalWork
    ) -> FloatVector:
        """This site's own final model, fine-tuned on its rows if the strategy asks."""
        model = site_step.site_model(strategy, req.params, self.state, self.mask)
        epochs = strategy.personal.finetune_epochs
        if not epochs:
            return model
        spec = replace(strategy.local_spec(plan.spec), epochs=epochs, steps=None)
        own = site_step.TrainingTask(model, LocalObjective(), "misc")
        index = plan.site_index(self.name)
        return work.train(self._task(own, plan.rounds, index, plan.seed, spec)).params

    # -- helpers ---------------------------------------------------------------------------

    def _refuse(self, env: Envelope, code: str, message: str) -> list[Envelope]:
        self._event("refused", {"code": code, "message": message, "kind": env.kind})
        return self._report(env.round, code, message)

    def _report(self, round_: int, code: str, message: str) -> list[Envelope]:
        return [ErrorReport(self.run_id, round_, code, message).to_envelope()]

    def _event(self, kind: str, detail: dict[str, Any] | None = None) -> None:
        self._events.append(
            SiteEvent(kind, self.run_id, self.last_round, dict(detail or {}), self._now)
        )


def replay_checked(handler: Handler[SiteMachine, Envelope]) -> Handler[SiteMachine, Envelope]:
    """``handler`` behind the site's replay guard: a copied or foreign message is logged
    and dropped before the handler sees it (every message of a run the site takes part in)."""

    def checked(site: SiteMachine, env: Envelope, message: Any) -> list[Envelope]:
        return [] if site._replayed(env) else handler(site, env, message)

    return checked


SITE_ROUTES: Router[SiteMachine, Envelope] = Router("site", SCHEMAS)
"""What a site does with each coordinator message. A kind with no handler in the site's
phase is refused: ``not_ready`` before the plan is approved, ``unexpected`` after."""
SITE_ROUTES.on(SESSION, ANY, JobPlan.KIND, SiteMachine._on_plan)
SITE_ROUTES.on(SESSION, ANY, ErrorReport.KIND, SiteMachine._on_coordinator_error)
SITE_ROUTES.on(SESSION, ANY, RunFinished.KIND, SiteMachine._on_run_finished)
_READY = SitePhase.READY.value
SITE_ROUTES.on(TRAIN, _READY, TrainRequest.KIND, replay_checked(lambda m, _, r: m._on_train(r)))
SITE_ROUTES.on(TRAIN, _READY, UpdateVerdict.KIND, replay_checked(lambda m, _, v: m._on_verdict(v)))
SITE_ROUTES.on(EVALUATE, _READY, EvalRequest.KIND, replay_checked(lambda m, _, r: m._on_eval(r)))
for _kind in (SECAGG, HE):
    SITE_ROUTES.on(TRAIN, ANY, _kind, lambda m, env, _: m._on_secure(env))
