"""A site's side of a deployed ``query`` job, as a sans-IO state machine.

``table_for(split)`` gives the site's rows; the rows of ``all`` are read when the machine
is made (so a file's problems show before the site connects), a plan's split when it is
approved. Phases: WAITING_PLAN -> WAITING_APPROVAL -> READY -> FINISHED. The site says Hello (row
count only), receives the query plan, checks that it hashes to the announced hash and
names this site, and asks its owner (the approval store: an approved hash or an allow
rule, exactly as for a training plan). Only then does it answer questions, each one
checked against the approved plan (:meth:`QueryPlan.permits`) and computed under the
stricter of the plan's and the site's own disclosure rules; a question the plan does not
ask is refused with an ErrorReport and nothing is computed. Every release is an event
(what left, the digest of its values, what was withheld, the epsilon it charged) for the
site's own release log, which the agent makes durable before the release is sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fedcare.core.errors import FedcareError, PrivacyBudgetExceededError, ProtocolError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.budget import BudgetLedger, JobRef
from fedcare.runtime.approvals import ApprovalStore, plan_hash
from fedcare.runtime.codec import SCHEMAS
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    BUDGET_EXCEEDED,
    NO_RUN,
    SESSION,
    TRAIN,
    ApprovalStatus,
    ErrorReport,
    Hello,
    JobPlan,
    RunFinished,
)
from fedcare.runtime.query_messages import QUERY, QueryQuestion, QueryRelease
from fedcare.runtime.query_plan import QueryPlan
from fedcare.runtime.query_run import values_digest
from fedcare.runtime.query_secure import layout_header, query_code, query_secagg_config
from fedcare.runtime.query_site import QuerySite
from fedcare.runtime.replay import ReplayGuard
from fedcare.runtime.router import ANY, Router, Unrouted
from fedcare.runtime.secure_wire import SECAGG, client_envelope, parse_server, session_of
from fedcare.secagg.client import SecAggClient
from fedcare.stats.noise import NoiseSpec, SiteNoise
from fedcare.stats.protocol import DisclosureRules, Question, Release, SiteTable
from fedcare.stats.secure import site_digits

QUESTION_REFUSED = "question_refused"  # ErrorReport code: not a question the plan asks


class QuerySitePhase(Enum):
    WAITING_PLAN = "waiting_plan"
    WAITING_APPROVAL = "waiting_approval"
    READY = "ready"
    FINISHED = "finished"


@dataclass(frozen=True)
class QuerySiteEvent:
    kind: str
    run_id: str
    round: int
    detail: dict[str, Any] = field(default_factory=dict)


QUERY_SITE_ROUTES: Router[QuerySiteMachine, Envelope] = Router("query site", SCHEMAS)


class QuerySiteMachine:
    """One site's part in query jobs: ``name`` is its certificate identity."""

    def __init__(
        self,
        name: str,
        approvals: ApprovalStore,
        table_for: Callable[[str], SiteTable],
        *,
        own_rules: DisclosureRules | None = None,
        coordinator: str | None = None,
        ledger: BudgetLedger | None = None,
        schema_sha256: str | None = None,
    ) -> None:
        self.name = name
        self.approvals = approvals
        self.table_for = table_for  # the site's rows of a split ("train", "test", "all")
        self.table = table_for("all")  # read (and checked) before anything is said
        self.own_rules = own_rules
        self.coordinator = coordinator
        self.ledger = ledger  # the site's privacy budget ledger (plans with noise need one)
        self.noise: SiteNoise | None = None
        self.schema_sha256 = schema_sha256  # of the schema its own file was checked against
        self.phase = QuerySitePhase.WAITING_PLAN
        self.run_id = NO_RUN
        self.offered: tuple[dict[str, Any], str] | None = None  # plan, hash awaiting owner
        self.site: QuerySite | None = None
        self.guard = ReplayGuard(NO_RUN)
        self.status = ""  # how the query ended, as the coordinator said ("finished", "failed")
        self.secagg: SecAggClient | None = None  # this site's part in the open secure sum
        self.secure_turn: tuple[int, bytes] | None = None  # (question, session) of that sum
        self._events: list[QuerySiteEvent] = []

    def start(self) -> list[Envelope]:
        """The greeting on every (re)connection: the row count, never a row."""
        if self.phase is not QuerySitePhase.FINISHED:
            self.phase = QuerySitePhase.WAITING_PLAN
        summary = {"rows": len(self.table.frame), "columns": len(self.table.frame.columns)}
        return [Hello(True, summary, [], self.run_id, 0).to_envelope()]

    def drain_events(self) -> list[QuerySiteEvent]:
        events, self._events = self._events, []
        return events

    def handle(self, env: Envelope) -> list[Envelope]:
        if self.coordinator is not None and env.sender != self.coordinator:
            return [self._error(env, "unknown_sender", f"'{env.sender}' is not the coordinator")]
        try:
            route = QUERY_SITE_ROUTES.route(env, self.phase.value)
        except FedcareError as exc:
            return [self._error(env, "malformed", str(exc))]
        if isinstance(route, Unrouted):
            if self.phase is not QuerySitePhase.READY:
                return [self._error(env, "not_ready", f"site is {self.phase.value}")]
            return [self._error(env, "unexpected", f"a coordinator may not send '{env.kind}'")]
        return route(self, env)

    def tick(self) -> list[Envelope]:
        """Re-ask the approval store while the plan waits for its owner."""
        if self.phase is not QuerySitePhase.WAITING_APPROVAL or self.offered is None:
            return []
        plan, hash_ = self.offered
        decision = self.approvals.decide(hash_, plan)
        return self._accept(plan, hash_, decision.reason) if decision.approved else []

    # -- handlers ---------------------------------------------------------------------

    def _on_plan(self, env: Envelope, message: JobPlan) -> list[Envelope]:
        try:
            computed = plan_hash(message.plan)
            if computed != message.plan_hash:
                raise FedcareError(
                    f"query plan announced hash {message.plan_hash} but hashes to {computed}"
                )
            plan = QueryPlan.from_dict(message.plan)
            if self.name not in plan.sites:
                raise FedcareError(f"the query plan does not name this site ({self.name})")
            plan.build()  # every analysis known to this site's fedcare, its settings valid
            wanted = plan.dataset_params.get("schema_sha256")
            if wanted is not None and wanted != self.schema_sha256:
                raise FedcareError(
                    f"the plan's schema has SHA-256 {wanted}; this site's rows were checked "
                    f"against {self.schema_sha256 or 'no schema (shipped data)'}: start the "
                    "agent with the study's schema (--schema)"
                )
            if plan.noise is not None and self.ledger is None:
                raise FedcareError(
                    "the plan noises every release, charged to the site's privacy budget, "
                    "and this site keeps no ledger (start it with --budget-epsilon)"
                )
        except FedcareError as exc:
            return [self._error(env, "plan_refused", str(exc))]
        if message.run_id != self.run_id:
            self.run_id = message.run_id
            self.guard = ReplayGuard(message.run_id)
        decision = self.approvals.request(message.plan, from_=env.sender)
        if not decision.approved:
            self.phase = QuerySitePhase.WAITING_APPROVAL
            self.offered = (dict(message.plan), computed)
            self._event("waiting_approval", {"plan_hash": computed, "detail": decision.reason})
            return [ApprovalStatus(self.run_id, 0, computed, False, decision.reason).to_envelope()]
        return self._accept(dict(message.plan), computed, decision.reason)

    def _accept(self, raw: dict[str, Any], hash_: str, reason: str) -> list[Envelope]:
        plan = QueryPlan.from_dict(raw)
        self.site = QuerySite.of(plan, self.table_for(plan.split), self.own_rules)
        if plan.noise is not None and self.ledger is not None:
            spec = NoiseSpec(plan.noise.mechanism, plan.noise.epsilon, plan.noise.delta)
            # The noise is the site's secret: drawn from the OS CSPRNG, never from a seed
            # the plan (known to every site and the coordinator) could reproduce.
            seeds = SeedStream(secrets.randbits(63))
            job = JobRef(self.run_id, hash_)
            index = plan.sites.index(self.name)
            self.noise = SiteNoise(self.name, spec, self.ledger, job, seeds, index)
        self.offered = None
        self.phase = QuerySitePhase.READY
        self._event("approved", {"plan_hash": hash_, "detail": reason})
        return [ApprovalStatus(self.run_id, 0, hash_, True, reason).to_envelope()]

    def _on_question(self, env: Envelope, message: QueryQuestion) -> list[Envelope]:
        rejection = self.guard.check(env, round_bound=False)
        if rejection is not None:
            self._event("message_rejected", {"reason": rejection.reason})
            return []
        assert self.site is not None
        if message.combine not in ("sum", "per_site"):
            return [self._error(env, QUESTION_REFUSED, f"unknown combine '{message.combine}'")]
        question = Question(message.analysis, message.step, message.params, message.combine)  # type: ignore[arg-type]
        secure = self.site.plan.secure == "secagg" and message.combine == "sum"
        if secure != bool(message.session):  # the plan, not the coordinator, decides
            says = "sums it securely" if secure else "answers it in the clear"
            detail = f"the approved plan {says}; the question asks otherwise"
            self._event("question_refused", {"question": env.round, "detail": detail})
            return [self._error(env, QUESTION_REFUSED, detail)]
        try:
            release = self.site.answer(question)
            spent = 0.0 if self.noise is None else self.noise.spent[0]
            if self.noise is not None:  # charged to the ledger before anything leaves
                release = self.noise.apply(question, release, env.round)
        except PrivacyBudgetExceededError as exc:
            self._event("question_refused", {"question": env.round, "detail": str(exc)})
            return [self._error(env, BUDGET_EXCEEDED, str(exc))]
        except (FedcareError, ValueError) as exc:
            self._event("question_refused", {"question": env.round, "detail": str(exc)})
            return [self._error(env, QUESTION_REFUSED, str(exc))]
        self._event(
            "released",
            {
                "question": env.round,
                "analysis": message.analysis,
                "step": message.step,
                "values": {k: list(v.shape) for k, v in release.values.items()},
                "suppressed": list(release.suppressed),
                "values_sha256": values_digest(release.values),
                "epsilon": 0.0 if self.noise is None else self.noise.spent[0] - spent,
                "secure": self.site.plan.secure if secure else "none",
            },
        )
        if secure:
            return self._join_secure_sum(env, message, release)
        reply = QueryRelease(
            self.run_id,
            env.round,
            message.analysis,
            message.step,
            dict(release.values),
            list(release.suppressed),
        )
        return [reply.to_envelope()]

    def _join_secure_sum(
        self, env: Envelope, message: QueryQuestion, release: Release
    ) -> list[Envelope]:
        """Feed the release's limb digits to a SecAgg client; its keys carry the layout."""
        assert self.site is not None
        sites = len(self.site.plan.sites)
        try:
            session = bytes.fromhex(message.session)
            where = f"site {self.name}, question '{message.step}'"
            layout, digits = site_digits(release, query_code(sites), where)
            config = query_secagg_config(session, sites, digits.size)
            client = SecAggClient(config, self.site.plan.sites.index(self.name), digits)
            first = client.start()
        except (FedcareError, ValueError) as exc:
            self._event("question_refused", {"question": env.round, "detail": str(exc)})
            return [self._error(env, QUESTION_REFUSED, str(exc))]
        self.secagg, self.secure_turn = client, (env.round, session)
        header = {"layout": layout_header(layout)}
        return [client_envelope(m, self.run_id, env.round, 0, **header) for m in first]

    def _on_secure(self, env: Envelope, _message: object) -> list[Envelope]:
        """A step of the open secure sum, relayed by the coordinator."""
        rejection = self.guard.check(env, round_bound=False)
        if rejection is not None:
            self._event("message_rejected", {"reason": rejection.reason})
            return []
        assert self.site is not None
        try:
            session, _attempt = session_of(env)
            if self.secagg is None or (env.round, session) != self.secure_turn:
                raise ProtocolError("a secure-sum message of no sum this site is in")
            message = parse_server(env, self.site.plan.sites.index(self.name))
            replies = self.secagg.handle(message)
        except FedcareError as exc:
            return [self._error(env, "secagg_refused", str(exc))]
        return [client_envelope(m, self.run_id, env.round, 0) for m in replies]

    def _on_finished(self, env: Envelope, message: RunFinished) -> list[Envelope]:
        self.phase = QuerySitePhase.FINISHED
        self.status = message.status
        self._event("query_finished", {"status": message.status, "detail": message.detail})
        return []

    def _on_error(self, env: Envelope, report: ErrorReport) -> list[Envelope]:
        self._event("coordinator_error", {"code": report.code, "message": report.message})
        return []

    def _error(self, env: Envelope, code: str, message: str) -> Envelope:
        return ErrorReport(self.run_id, env.round, code, message).to_envelope()

    def _event(self, kind: str, detail: dict[str, Any]) -> None:
        self._events.append(QuerySiteEvent(kind, self.run_id, 0, detail))


QUERY_SITE_ROUTES.on(SESSION, ANY, JobPlan.KIND, QuerySiteMachine._on_plan)
QUERY_SITE_ROUTES.on(SESSION, ANY, RunFinished.KIND, QuerySiteMachine._on_finished)
QUERY_SITE_ROUTES.on(SESSION, ANY, ErrorReport.KIND, QuerySiteMachine._on_error)
QUERY_SITE_ROUTES.on(
    QUERY, QuerySitePhase.READY.value, QueryQuestion.KIND, QuerySiteMachine._on_question
)
QUERY_SITE_ROUTES.on(TRAIN, QuerySitePhase.READY.value, SECAGG, QuerySiteMachine._on_secure)
