"""A site's side of a query job: check the question against the approved plan, answer it
on the site's own rows under the stricter of the plan's and the site's disclosure rules.

The simulator calls :func:`answer_question` for every simulated site, the deployed site
agent for its one site, so a release is computed the same way in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcare.core.errors import ProtocolError
from fedcare.runtime.query_plan import QueryPlan
from fedcare.stats.protocol import Analysis, DisclosureRules, Question, Release, SiteTable, answer


@dataclass(frozen=True)
class QuerySite:
    """One site's standing for a query: the approved plan (its analyses built once), its
    rows and its own disclosure rules (None: the plan's apply unchanged)."""

    plan: QueryPlan
    analyses: tuple[Analysis, ...]
    table: SiteTable
    own_rules: DisclosureRules | None = None

    @classmethod
    def of(
        cls, plan: QueryPlan, table: SiteTable, own_rules: DisclosureRules | None = None
    ) -> QuerySite:
        return cls(plan, tuple(plan.build()), table, own_rules)

    @property
    def rules(self) -> DisclosureRules:
        """The rules this site applies: the plan's, never looser than its own."""
        return self.plan.site_rules(self.own_rules)

    def answer(self, question: Question) -> Release:
        """The release for ``question``; a question the plan does not ask is refused."""
        if not self.plan.permits(question, list(self.analyses)):
            raise ProtocolError(
                f"site {self.table.site}: question '{question.step}' of analysis "
                f"'{question.analysis}' is not one the approved plan {self.plan.hash[:12]} "
                "asks; nothing was computed"
            )
        return answer(question, self.table, self.rules)


def answer_question(
    plan: QueryPlan,
    question: Question,
    table: SiteTable,
    own_rules: DisclosureRules | None = None,
) -> Release:
    """One site's release for ``question`` (see :class:`QuerySite`)."""
    return QuerySite.of(plan, table, own_rules).answer(question)
