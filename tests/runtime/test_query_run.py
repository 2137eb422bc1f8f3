"""The query job's plan, its progress (QueryRun) and a site's answers, without a network."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.runtime.query_plan import AnalysisSpec, NoisePlan, QueryPlan
from fedcare.runtime.query_run import QueryRun
from fedcare.runtime.query_site import QuerySite
from fedcare.stats.protocol import DisclosureRules, Question, combine, run_in_process
from tests.runtime.query_kinds import moments_kind, tables  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("moments_kind")

SIZES = {"north": 40, "south": 25, "east": 12}


def plan_of(*columns: str, min_cell: int = 5) -> QueryPlan:
    return QueryPlan(
        name="ages",
        dataset="own",
        sites=tuple(SIZES),
        analyses=tuple(AnalysisSpec(f"m-{c}", "moments", {"column": c}) for c in columns),
        rules=DisclosureRules(min_cell=min_cell),
    )


def drive(run: QueryRun, sites: dict[str, QuerySite], stop_after: int | None = None) -> None:
    while (question := run.question) is not None and run.asked != stop_after:
        run.advance(combine(question, {n: s.answer(question) for n, s in sites.items()}))


def test_the_plan_hash_covers_every_setting_and_survives_the_wire():
    plan = plan_of("age")
    again = QueryPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.hash == plan.hash
    assert plan_of("age", min_cell=10).hash != plan.hash
    noised = QueryPlan(**{**plan.__dict__, "noise": NoisePlan("laplace", 1.0)})
    assert noised.hash != plan.hash


def test_a_plan_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match=r"analysis ids must be unique; repeated: \['m-age'\]"):
        plan_of("age", "age")
    with pytest.raises(ConfigError, match="unknown analysis kind 'moment'; did you mean 'moments'"):
        QueryPlan("x", "own", ("a",), (AnalysisSpec("m", "moment", {}),)).build()
    with pytest.raises(
        ConfigError, match=r"'column': Field required; 'colum': unknown key \(allowed: column\)"
    ):
        QueryPlan("x", "own", ("a",), (AnalysisSpec("m", "moments", {"colum": "age"}),)).build()
    raw = plan_of("age").to_dict() | {"extra": 1}
    with pytest.raises(ConfigError, match=r"unknown fields \['extra'\]"):
        QueryPlan.from_dict(raw)


def test_the_query_reaches_the_reference_drivers_numbers_and_the_pooled_ones():
    plan = plan_of("age")
    data = tables(SIZES)
    run = QueryRun.start(plan)
    drive(run, {n: QuerySite.of(plan, t) for n, t in data.items()})
    reference = run_in_process(plan.build()[0], data, plan.rules)
    assert run.done and run.asked == 2
    [result] = run.results
    assert result["tables"] == reference.tables
    pooled = pd.concat([t.frame for t in data.values()])["age"]
    assert result["tables"]["summary"]["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert result["tables"]["summary"]["variance"] == pytest.approx(pooled.var(), rel=1e-12)


def test_a_query_resumed_from_its_memo_between_steps_ends_as_an_uninterrupted_one():
    plan = plan_of("age", "age2")
    data = tables(SIZES)
    for t in data.values():
        t.frame["age2"] = t.frame["age"] ** 2
    sites = {n: QuerySite.of(plan, t) for n, t in data.items()}
    whole = QueryRun.start(plan)
    drive(whole, sites)
    for stop in (1, 2, 3):  # inside the first analysis, between the two, inside the second
        cut = QueryRun.start(plan)
        drive(cut, sites, stop_after=stop)
        memo = json.loads(json.dumps(cut.memo(), allow_nan=False))  # what a checkpoint keeps
        resumed = QueryRun.restore(plan, memo)
        assert resumed.asked == stop
        drive(resumed, sites)
        assert resumed.results == whole.results
    with pytest.raises(ConfigError, match="taken for plan"):
        QueryRun.restore(plan_of("age"), whole.memo())


def test_a_site_answers_only_the_plans_questions_under_the_stricter_rules():
    plan = plan_of("age")
    data = tables(SIZES)
    site = QuerySite.of(plan, data["east"])  # 12 rows, about 11 with an age
    asked = plan.build()[0].start().question
    assert site.answer(asked).suppressed == ()
    strict = QuerySite.of(plan, data["east"], DisclosureRules(min_cell=20))
    assert strict.rules == DisclosureRules(min_cell=20)
    release = strict.answer(asked)
    assert release.suppressed and np.all(release.values["n"] == 0)
    lax = QuerySite.of(plan, data["east"], DisclosureRules(min_cell=1, release_extremes=True))
    assert lax.rules == plan.rules  # a site's own rules never loosen the plan's
    other_column = Question("m-age", "test_sums", {"column": "income"}, "sum")
    with pytest.raises(ProtocolError, match=r"is not one the approved plan .* asks"):
        site.answer(other_column)
    other_analysis = Question("cox", "test_sums", {"column": "age"}, "sum")
    with pytest.raises(ProtocolError, match="nothing was computed"):
        site.answer(other_analysis)
