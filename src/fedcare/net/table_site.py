"""A deployed study on hospitals' own tables: the plan's data section and the site that checks it.

A :class:`~fedcare.runtime.rounds.RunPlan` may carry a ``data`` section
(:class:`~fedcare.data.site_table.SiteTableSpec`: schema, its hash, the feature space, the
split). It is part of the plan's canonical JSON, so the plan hash a data owner approves
covers the schema their rows are checked and encoded with.

:class:`TableSiteMachine` is a :class:`~fedcare.runtime.site.SiteMachine` whose rows come
from a file. Before connecting it checks what it can without the schema (the file exists,
parses, has rows). When a job plan arrives, before its owner is asked or anything trains, it
checks the file against the plan's schema. Problems are reported as the site's data check
always is: a Hello with ``data_ok`` false and every problem (file, row, column, expected,
found), which the coordinator records and acknowledges (``data_invalid``); then the site
prints them and takes no part. (It waits for that acknowledgement so that its report is
not lost when its agent closes the stream.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.data.base import SiteData
from fedcare.data.site_table import SiteTableSpec, check_site_table, load_site_table, read_table
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import DATA_INVALID, ErrorReport, Hello, JobPlan, parse_message
from fedcare.runtime.rounds import RunPlan
from fedcare.runtime.site import DataCheck, LocalWork, SiteMachine, SitePhase


def pre_check(site: str, path: Path) -> DataCheck:
    """What the site checks before it connects (the schema comes with the plan)."""
    read = read_table(site, path)
    return DataCheck(read.ok, read.summary, [str(i) for i in read.errors])


class TableSiteMachine(SiteMachine):
    """A site whose rows are a hospital's own file, checked against each plan's schema."""

    def __init__(
        self,
        name: str,
        approvals: Any,
        path: Path,
        train: Callable[[SiteData], Callable[[RunPlan], LocalWork]],
        *,
        log: Callable[[str], None] = print,
        **kwargs: Any,
    ) -> None:
        self.table_path = Path(path)
        self.table_log = log
        self.table_rows: SiteData | None = None
        self._work_for_rows = train
        super().__init__(
            name, approvals, pre_check(name, self.table_path), self._table_work, **kwargs
        )

    def _table_work(self, plan: RunPlan) -> LocalWork:
        if self.table_rows is None:
            raise ConfigError(f"site '{self.name}': no rows were checked against this plan")
        work: LocalWork = self._work_for_rows(self.table_rows)(plan)
        return work

    def handle(self, env: Envelope, now: float) -> list[Envelope]:
        from_coordinator = self.coordinator is None or env.sender == self.coordinator
        if env.kind == JobPlan.KIND and self.data.ok and from_coordinator:
            refusal = self._check_plan_table(env)
            if refusal is not None:
                return refusal
        acknowledgement = env.kind == ErrorReport.KIND and not self.data.ok and from_coordinator
        if acknowledgement and self._refusal_acknowledged(env):
            return []
        return super().handle(env, now)

    def _refusal_acknowledged(self, env: Envelope) -> bool:
        """The coordinator has this site's data problems: stop (nothing will run here).

        The site stays connected until then, so its report is not lost when the agent
        closes the stream.
        """
        try:
            message = parse_message(env)
        except ProtocolError:
            return False
        if not isinstance(message, ErrorReport) or message.code != DATA_INVALID:
            return False
        if self.phase is not SitePhase.REFUSED:  # refused at start: already printed
            self.phase = SitePhase.REFUSED
            self._event("data_invalid", {"problems": self.data.problems})
        return True

    def _check_plan_table(self, env: Envelope) -> list[Envelope] | None:
        """None if this site's file fits the plan's schema (rows encoded), else the refusal."""
        try:
            message = parse_message(env)
        except ProtocolError:
            return None  # the base machine refuses malformed messages
        if not isinstance(message, JobPlan):
            return None
        sites = message.plan.get("sites", [])
        if self.name not in sites:
            return None  # the base machine refuses a plan that does not name this site
        index = list(sites).index(self.name)
        try:
            spec = SiteTableSpec.from_dict(message.plan.get("data"))
        except FedcareError as exc:
            return self._refuse_table(
                self.data.summary,
                [
                    f"site '{self.name}', file '{self.table_path}': this site holds a table, but the "
                    f"job plan (dataset '{message.plan.get('dataset')}') cannot encode it: {exc}"
                ],
            )
        check = check_site_table(spec, self.name, self.table_path, index)
        if not check.ok:
            return self._refuse_table(check.summary, [str(i) for i in check.errors])
        self.table_rows = load_site_table(spec, self.name, self.table_path, index)
        self.data = DataCheck(True, check.summary, [])
        self.table_log(
            f"data check passed for '{self.name}' against the plan's schema "
            f"{spec.hash[:16]}…: {check.summary}"
        )
        for warning in check.warnings:  # e.g. a detected delimiter, one-class training rows
            self.table_log(f"warning: {warning}")
        return None

    def _refuse_table(self, summary: dict[str, Any], problems: list[str]) -> list[Envelope]:
        """Report the problems as the data check always does (a Hello with data_ok false);
        the site stops once the coordinator acknowledges them."""
        self.data = DataCheck(False, summary, problems)
        self.table_rows = None
        self.table_log(
            f"'{self.table_path}' does not fit the job plan's schema: reporting "
            f"{len(problems)} problem(s) to the coordinator"
        )
        hello = Hello(False, summary, problems, self.run_id, self.last_round)
        return [hello.to_envelope()]
