"""The coordinator's side of a deployed ``query`` job, as a sans-IO state machine.

Phases: WAITING (for every site of the plan: connected, data checked, the plan's hash
approved by its owner) -> ASKING (the current question is out; releases come in) -> ...
-> FINISHED or FAILED. Every site of the plan answers every question: a query's totals are
exact over the sites that answer, so a site whose data failed, that refuses a question or
reports an error stops the query, naming the site and why (a partial total is never
combined silently).

Each release is an event (``query_release``: site, question, arrays and their shapes,
what the site withheld), so the driver writes it to the audit log; each combined step is
a ``query_step`` event carrying the :meth:`QueryRun.memo` to checkpoint before anything
else is sent. A machine restored from that memo re-asks the question it was on once the
sites are back (sites answer it again; answers are deterministic) and asks none twice
that had been combined.

Under ``secure: secagg`` every ``sum`` question is answered through real SecAgg
(:mod:`fedcare.runtime.query_secure`): the coordinator relays the protocol's rounds and
sees only the totals, exactly the simulator's; each site's release event then records
its layout, not its values (``per_site`` questions are per site by definition and are
combined in the clear, as in the simulator). ``secure: ckks`` runs in the simulator only.
Noise is the sites' own: each noises its releases and charges its ledger before they leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.runtime.codec import SCHEMAS
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
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
from fedcare.runtime.query_run import (
    QueryRun,
    ReleaseRecord,
    jsonable,
    release_record,
    split_noise,
    values_digest,
)
from fedcare.runtime.query_secure import QuerySecureSum, new_session
from fedcare.runtime.router import ANY, Router, Unrouted
from fedcare.runtime.secure_wire import SECAGG, session_of
from fedcare.stats.protocol import Combined, Question, Release, combine
from fedcare.stats.secure import flag_notes  # what totals say of suppression


class QueryPhase(Enum):
    WAITING = "waiting"
    ASKING = "asking"
    FINISHED = "finished"
    FAILED = "failed"


class Outgoing(NamedTuple):
    recipient: str
    envelope: Envelope


@dataclass(frozen=True)
class QueryEvent:
    """What the run store and audit log record; ``memo`` is the checkpoint to write first."""

    kind: str
    run_id: str
    round: int
    site: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] | None = field(default=None, compare=False)


@dataclass
class _Site:
    connected: bool = False
    data_ok: bool = False
    approved: bool = False
    detail: str = ""


QUERY_COORDINATOR_ROUTES: Router[QueryCoordinator, Outgoing] = Router("query coordinator", SCHEMAS)


class QueryCoordinator:
    """One query job over the plan's sites; ``run_id`` names it on the wire."""

    def __init__(self, plan: QueryPlan, run_id: str, run: QueryRun | None = None) -> None:
        if plan.secure not in ("none", "secagg"):
            raise ConfigError(
                f"a deployed query sums securely by SecAgg only: 'secure: {plan.secure}' "
                "runs in the simulator only (fedcare analyze); use 'secure: secagg' or "
                "'secure: none' to deploy"
            )
        self.plan = plan
        self.run_id = run_id
        self.run = run or QueryRun.start(plan)
        self.sites = {name: _Site() for name in plan.sites}
        self.phase = QueryPhase.FINISHED if self.run.done else QueryPhase.WAITING
        self.releases: dict[str, Release] = {}
        self.failure = ""
        self.rows: dict[str, int] = {}  # each site's row count, as its Hello said
        self.records: list[ReleaseRecord] = []  # every release combined by this machine
        self.secure: QuerySecureSum | None = None  # the open question's SecAgg, if any
        self._events: list[QueryEvent] = []

    @classmethod
    def restore(cls, plan: QueryPlan, run_id: str, memo: Mapping[str, Any]) -> QueryCoordinator:
        """The machine a checkpointed memo was taken from (it re-asks its open question)."""
        return cls(plan, run_id, QueryRun.restore(plan, memo))

    # -- driver surface ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase in (QueryPhase.FINISHED, QueryPhase.FAILED)

    def drain_events(self) -> list[QueryEvent]:
        events, self._events = self._events, []
        return events

    def site_connected(self, name: str) -> None:
        if name in self.sites:
            self.sites[name].connected = True

    def site_disconnected(self, name: str) -> None:
        """A site that drops out is asked again once it is back (nothing is combined
        without it); its release for the open question, if any, is kept."""
        if name in self.sites:
            self.sites[name] = _Site()
            if self.phase is QueryPhase.ASKING:
                self.phase = QueryPhase.WAITING
            if self.secure is not None:  # the sum cannot finish: asked again, afresh
                self.secure = None

    def handle(self, env: Envelope) -> list[Outgoing]:
        """React to one message from a site (``env.sender`` is its certificate's name)."""
        if env.sender not in self.sites:
            return [self._error(env.sender, "unknown_site", "this site is not in the query plan")]
        try:
            route = QUERY_COORDINATOR_ROUTES.route(env, self.phase.value)
        except ProtocolError as exc:
            return [self._error(env.sender, "malformed", str(exc))]
        if isinstance(route, Unrouted):
            return [self._error(env.sender, "unexpected", f"a site may not send '{env.kind}'")]
        return route(self, env)

    # -- handlers ---------------------------------------------------------------------

    def _on_hello(self, env: Envelope, hello: Hello) -> list[Outgoing]:
        site = self.sites[env.sender]
        site.connected = True
        if not hello.data_ok:
            problems = "; ".join(hello.problems) or "its data check failed"
            return self._fail(f"site {env.sender}: {problems}")
        site.data_ok = True
        rows = hello.data.get("rows")
        if isinstance(rows, int) and not isinstance(rows, bool):
            self.rows[env.sender] = rows
        if self.done:
            return [self._finished(env.sender)]
        plan = JobPlan(self.run_id, self.run.asked, self.plan.to_dict(), self.plan.hash)
        self._event("plan_sent", site=env.sender, detail={"plan_hash": self.plan.hash})
        return [Outgoing(env.sender, plan.to_envelope())]

    def _on_approval(self, env: Envelope, status: ApprovalStatus) -> list[Outgoing]:
        site = self.sites[env.sender]
        if status.plan_hash != self.plan.hash:
            return [self._error(env.sender, "unexpected", "approval of another plan")]
        site.approved, site.detail = status.approved, status.detail
        self._event(
            "approved" if status.approved else "waiting_approval",
            site=env.sender,
            detail={"plan_hash": status.plan_hash, "detail": status.detail},
        )
        return self._maybe_ask()

    def _on_error(self, env: Envelope, report: ErrorReport) -> list[Outgoing]:
        return self._fail(f"site {env.sender}: {report.code}: {report.message}")

    def _on_release(self, env: Envelope, msg: QueryRelease) -> list[Outgoing]:
        question = self.run.question
        if (
            question is None
            or env.round != self.run.asked
            or (msg.analysis, msg.step) != (question.analysis, question.step)
        ):
            return [self._error(env.sender, "unexpected", "a release for no open question")]
        if env.sender in self.releases:
            return [self._error(env.sender, "duplicate", f"question {env.round} already answered")]
        release = Release(dict(msg.values), tuple(msg.suppressed))
        self.releases[env.sender] = split_noise(release)[0]
        record = release_record(question, self.run.asked, env.sender, release)
        self.records.append(record)
        detail = {**record.to_dict(), "values_sha256": values_digest(release.values)}
        self._event("query_release", site=env.sender, detail=detail)
        if set(self.releases) != set(self.sites):
            return []
        ordered = {site: self.releases[site] for site in self.plan.sites}
        try:
            combined = combine(question, ordered)
        except (ValueError, ConfigError) as exc:
            return self._fail(f"analysis '{question.analysis}': {exc}")
        return self._combine(combined)

    def _on_secure(self, env: Envelope, _message: object) -> list[Outgoing]:
        """A site's message in the open question's SecAgg: relayed, and once every masked
        input is in and unmasked, the totals are combined."""
        question, secure = self.run.question, self.secure
        if question is None or secure is None or env.round != self.run.asked:
            return [self._error(env.sender, "unexpected", "a secure-sum message for no open sum")]
        try:
            if session_of(env)[0] != secure.session:  # of a sum aborted by a lost site
                return [self._error(env.sender, "unexpected", "a message of an earlier sum")]
        except ProtocolError as exc:
            return [self._error(env.sender, "malformed", str(exc))]
        try:
            relayed, layout = secure.receive(env.sender, env)
        except ProtocolError as exc:
            return self._fail(f"site {env.sender}: secure sum of question {env.round}: {exc}")
        if layout is not None:  # the site's release is in the sum: its layout, no values
            shapes = {key: list(shape) for key, shape in layout}
            self.records.append(
                ReleaseRecord(question.analysis, question.step, env.round, env.sender, dict(layout))
            )
            detail = {
                **self.records[-1].to_dict(),
                "values": shapes,
                "secure": self.plan.secure,
            }
            self._event("query_release", site=env.sender, detail=detail)
        out = [Outgoing(site, envelope) for site, envelope in relayed]
        if not secure.done:
            return out
        self.secure = None
        try:
            total = secure.total()
        except ProtocolError as exc:
            return self._fail(str(exc))
        return self._combine(Combined(total=total, suppressed=flag_notes(total)))

    # -- the walk through the analyses ------------------------------------------------

    def _maybe_ask(self) -> list[Outgoing]:
        if self.phase is not QueryPhase.WAITING or self.run.question is None:
            return []
        if not all(s.connected and s.data_ok and s.approved for s in self.sites.values()):
            return []
        self.phase = QueryPhase.ASKING
        if self._secure_sum(self.run.question):  # every site joins the new session
            self.releases = {}
        return self._ask([s for s in self.sites if s not in self.releases])

    def _ask(self, sites: list[str]) -> list[Outgoing]:
        question = self.run.question
        assert question is not None
        session = b""
        if self._secure_sum(question):
            session = new_session(self.run_id, self.run.asked)
            self.secure = QuerySecureSum(session, self.plan.sites, self.run_id, self.run.asked)
        message = QueryQuestion(
            self.run_id,
            self.run.asked,
            question.analysis,
            question.step,
            jsonable(dict(question.params)),
            question.combine,
            session.hex(),
        )
        self._event(
            "query_question",
            detail={"analysis": question.analysis, "step": question.step, "sites": sites},
        )
        return [Outgoing(site, message.to_envelope()) for site in sites]

    def _secure_sum(self, question: Question | None) -> bool:
        return self.plan.secure == "secagg" and question is not None and question.combine == "sum"

    def _combine(self, combined: Combined) -> list[Outgoing]:
        question = self.run.question
        assert question is not None
        try:
            finished = self.run.advance(combined)
        except (ValueError, ConfigError) as exc:  # an analysis cannot go on (no rows, ...)
            return self._fail(f"analysis '{question.analysis}': {exc}")
        self.releases = {}
        detail: dict[str, Any] = {"analysis": question.analysis, "step": question.step}
        if finished is not None:
            detail["finished"] = finished.analysis
        self._event("query_step", detail=detail, memo=self.run.memo())
        if self.run.done:
            self.phase = QueryPhase.FINISHED
            self._event("query_finished", detail={"analyses": len(self.run.results)})
            return [self._finished(site) for site in self.sites]
        return self._ask(list(self.sites))

    def _fail(self, reason: str) -> list[Outgoing]:
        if self.done:
            return []
        self.phase, self.failure = QueryPhase.FAILED, reason
        self._event("query_failed", detail={"reason": reason})
        return [self._finished(site) for site, s in self.sites.items() if s.connected]

    def _finished(self, site: str) -> Outgoing:
        status = "finished" if self.phase is QueryPhase.FINISHED else "failed"
        message = RunFinished(self.run_id, self.run.asked, status, detail=self.failure)
        return Outgoing(site, message.to_envelope())

    def _error(self, site: str, code: str, message: str) -> Outgoing:
        return Outgoing(site, ErrorReport(self.run_id, self.run.asked, code, message).to_envelope())

    def _event(
        self,
        kind: str,
        *,
        site: str = "",
        detail: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> None:
        self._events.append(
            QueryEvent(kind, self.run_id, self.run.asked, site, dict(detail or {}), memo)
        )


QUERY_COORDINATOR_ROUTES.on(SESSION, ANY, Hello.KIND, QueryCoordinator._on_hello)
QUERY_COORDINATOR_ROUTES.on(SESSION, ANY, ApprovalStatus.KIND, QueryCoordinator._on_approval)
QUERY_COORDINATOR_ROUTES.on(SESSION, ANY, ErrorReport.KIND, QueryCoordinator._on_error)
QUERY_COORDINATOR_ROUTES.on(QUERY, ANY, QueryRelease.KIND, QueryCoordinator._on_release)
QUERY_COORDINATOR_ROUTES.on(TRAIN, QueryPhase.ASKING.value, SECAGG, QueryCoordinator._on_secure)
