"""A DP heart study deployed over mTLS: central noise at the coordinator, budgets at the sites.

Real processes through the ``fedcare`` CLI. One hospital starts with a privacy budget too
small for the plan and refuses it before anything runs; the others charge their ledgers
round by round and end with exactly the epsilon the coordinator reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.net.site_agent import LEDGER_FILE
from fedcare.net.store import RunStore
from fedcare.privacy.budget import BudgetLedger
from fedcare.privacy.client_level import JobPrivacy
from tests.e2e import test_deploy
from tests.e2e.test_deploy import SITES, Deployment

pytestmark = pytest.mark.slow
deployment = test_deploy.deployment  # the study folder, CA and bundles fixture

DP_STRATEGY = "  - name: fedavg\n    params: {dp: {noise_multiplier: 1.0, clip_norm: 0.5}}\n"


def start_site(dep: Deployment, name: str, port: int, epsilon: float) -> None:
    dep.site(name, port, "--budget-epsilon", str(epsilon), "--budget-delta", "1e-4")


@pytest.mark.parametrize("deployment", [3], indirect=True)
def test_dp_study_with_site_budgets_refuses_the_site_that_cannot_pay(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.study.write_text(dep.study.read_text().replace("  - name: fedavg\n", DP_STRATEGY))
    plan = dep.plan()
    planned = JobPrivacy.of(plan.dp, 1.0, plan.rounds).planned_epsilon
    dep.approve_everywhere()
    coordinator, port = dep.coordinator(
        "--run-id", "dp-run", "--start-grace", "120", "--round-timeout", "60"
    )
    poor = "switzerland"
    for site in SITES:
        start_site(dep, site, port, epsilon=planned / 2 if site == poor else 2 * planned)
    assert coordinator.wait(timeout=150) == 0, dep.log("coordinator").read_text()

    dep.wait_log(poor, "PLAN REFUSED")
    assert f"site '{poor}' refused the plan" in dep.log("coordinator").read_text()
    result = json.loads((dep.out / "deploy" / "dp-run" / "result.json").read_text())
    final_epsilon = result["history"][-1]["epsilon"]
    assert final_epsilon == pytest.approx(planned)
    with RunStore.in_folder(dep.out) as store:
        rounds = store.rounds("dp-run")
        assert all(
            sorted(r.by_status("contributed")) == sorted(set(SITES) - {poor}) for r in rounds
        )
        refused = store.events("dp-run", "plan_refused")
        assert [e.site for e in refused] == [poor]
        assert "budget_exceeded" in refused[0].detail["reason"]
    for site in SITES:
        dep.wait_log(site, "run over (finished)")
        ledger = BudgetLedger(
            Path(dep.root / "sites" / site / LEDGER_FILE),
            site=site,
            dataset=f"heart-disease:{site}",
        )
        spent = ledger.job_spend()
        if site == poor:
            assert spent == {}
        else:  # charged before each round it trained: the run's epsilon in the end
            assert spent["dp-run"][0] == pytest.approx(final_epsilon)
        ledger.close()
