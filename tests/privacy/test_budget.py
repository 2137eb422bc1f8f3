"""The site ledger refuses work over budget, persists, survives two writers, detects edits."""

import multiprocessing
import sqlite3

import pytest

from fedcare.core.errors import ConfigError, PrivacyBudgetExceededError, ProtocolError
from fedcare.privacy.accountant import PrivacyAccountant
from fedcare.privacy.budget import BudgetLedger, JobRef, LedgerIntegrityError, PrivacyBudget

JOB_A = JobRef("job-a", "plan-aaaa")
JOB_B = JobRef("job-b", "plan-bbbb")


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "cleveland-ledger.sqlite"


def open_ledger(path, budget=PrivacyBudget(4.0, 1e-5)):
    return BudgetLedger(path, site="cleveland", dataset="heart", budget=budget)


def test_a_job_that_cannot_fit_is_refused_with_every_figure_in_the_message(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 3.0, 1e-6)
        with pytest.raises(PrivacyBudgetExceededError) as info:
            ledger.check_can_start(JOB_B, 1.5, 1e-6)
    message = str(info.value)
    for part in (
        "cleveland",
        "heart",
        "job-b",
        "budget epsilon=4",
        "spent epsilon=3",
        "remaining epsilon=1",
        "epsilon=1.5",
    ):
        assert part in message


def test_charges_are_cumulative_per_job_and_summed_across_jobs(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 0.5, 1e-6)
        ledger.charge(JOB_A, 1.25, 2e-6)  # job A's total so far, not an increment
        ledger.charge(JOB_B, 1.0, 1e-6)
        assert ledger.spent() == pytest.approx((2.25, 3e-6))
        assert ledger.remaining() == pytest.approx((1.75, 7e-6))
        with pytest.raises(ProtocolError, match="cannot decrease"):
            ledger.charge(JOB_A, 1.0, 2e-6)
        with pytest.raises(ProtocolError, match="approved with plan"):
            ledger.charge(JobRef("job-a", "another-plan"), 2.0, 2e-6)


def test_a_step_that_would_exceed_the_budget_is_refused_before_it_is_taken(ledger_path):
    """A running DP-SGD job asks the accountant for the epsilon *after* the next step,
    charges it, and only then takes the step; it stops exactly at the last step that fits."""
    accountant = PrivacyAccountant(delta=1e-5)
    steps_taken = 0
    with open_ledger(ledger_path, PrivacyBudget(1.0, 1e-5)) as ledger:
        for _ in range(10_000):
            after = accountant.epsilon_if(2.0, 0.01, 10)
            try:
                ledger.charge(JOB_A, after, 1e-5)
            except PrivacyBudgetExceededError:
                break
            accountant.record(2.0, 0.01, 10)  # the step happens only after the charge
            steps_taken += 10
        assert 0 < steps_taken < 10_000
        assert accountant.epsilon() <= 1.0
        assert accountant.epsilon_if(2.0, 0.01, 10) > 1.0
        assert ledger.spent()[0] == pytest.approx(accountant.epsilon())


def test_the_ledger_persists_across_reopen_and_keeps_its_budget(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 2.0, 1e-6)
        head = ledger.head()
    with BudgetLedger(ledger_path, site="cleveland", dataset="heart") as again:
        assert again.budget == PrivacyBudget(4.0, 1e-5)
        assert again.spent() == pytest.approx((2.0, 1e-6))
        assert again.head() == head
        [charge] = [e for e in again.entries() if e.kind == "charge"]
        assert (charge.job_id, charge.plan_hash, charge.epsilon) == ("job-a", "plan-aaaa", 2.0)
        assert charge.time.endswith("+00:00")
    with pytest.raises(ConfigError, match="set_budget"):
        open_ledger(ledger_path, PrivacyBudget(40.0, 1e-5))
    with pytest.raises(ConfigError, match="no budget"):
        BudgetLedger(ledger_path, site="cleveland", dataset="other-dataset")


def test_datasets_in_one_file_have_separate_budgets(ledger_path):
    with (
        open_ledger(ledger_path) as heart,
        BudgetLedger(
            ledger_path, site="cleveland", dataset="ecg", budget=PrivacyBudget(1.0, 1e-6)
        ) as ecg,
    ):
        heart.charge(JOB_A, 3.5, 0.0)
        ecg.charge(JOB_A, 0.5, 0.0)
        assert heart.spent()[0] == 3.5 and ecg.spent()[0] == 0.5


def test_raising_a_budget_is_explicit_and_recorded(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 4.0, 0.0)
        with pytest.raises(PrivacyBudgetExceededError):
            ledger.check_can_start(JOB_B, 0.5, 0.0)
        ledger.set_budget(PrivacyBudget(5.0, 1e-5))
        ledger.check_can_start(JOB_B, 0.5, 0.0)
        assert [e.kind for e in ledger.entries()] == ["budget", "charge", "budget"]


def test_an_edited_entry_is_detected_on_reopen_and_never_reset(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 3.0, 1e-6)
    with sqlite3.connect(ledger_path) as db:  # someone lowers the recorded spend by hand
        db.execute("UPDATE entries SET epsilon = 0.1 WHERE kind = 'charge'")
    with pytest.raises(LedgerIntegrityError, match="hash chain"):
        open_ledger(ledger_path)
    with sqlite3.connect(ledger_path) as db:  # still there: nothing was reset
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2


def test_a_deleted_entry_is_detected_while_the_ledger_is_open(ledger_path):
    with open_ledger(ledger_path) as ledger:
        ledger.charge(JOB_A, 1.0, 0.0)
        ledger.charge(JOB_B, 1.0, 0.0)
        with sqlite3.connect(ledger_path) as db:
            db.execute("DELETE FROM entries WHERE job_id = 'job-b'")
        with pytest.raises(LedgerIntegrityError, match="gone or changed"):
            ledger.charge(JOB_A, 2.0, 0.0)


def test_a_corrupted_file_gives_a_clear_error(ledger_path):
    ledger_path.write_bytes(b"this is not a database, it is a spreadsheet export" * 100)
    with pytest.raises(LedgerIntegrityError, match=r"cleveland.*not a readable ledger"):
        open_ledger(ledger_path)
    assert ledger_path.read_bytes().startswith(b"this is not a database")


def _charge_until_refused(path: str, job_id: str, results) -> None:
    ledger = BudgetLedger(path, site="cleveland", dataset="heart")
    job = JobRef(job_id, f"plan-{job_id}")
    total = 0.0
    accepted = 0
    while True:
        try:
            ledger.charge(job, total + 0.25, 0.0)
        except PrivacyBudgetExceededError:
            break
        total += 0.25
        accepted += 1
    ledger.close()
    results.put(accepted)


def test_two_writers_in_separate_processes_never_overspend(ledger_path):
    open_ledger(ledger_path, PrivacyBudget(10.0, 1e-5)).close()
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_charge_until_refused, args=(str(ledger_path), name, results))
        for name in ("job-x", "job-y")
    ]
    for w in workers:
        w.start()
    accepted = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    # 10.0 / 0.25 = 40 increments in all, however the two writers interleaved.
    assert sum(accepted) == 40
    with open_ledger(ledger_path, None) as ledger:
        assert ledger.spent()[0] == pytest.approx(10.0)
        assert len(ledger.entries()) == 41


def test_bad_amounts_and_budgets_are_refused(ledger_path):
    with pytest.raises(ConfigError, match="epsilon"):
        PrivacyBudget(0.0, 1e-5)
    with open_ledger(ledger_path) as ledger:
        with pytest.raises(ConfigError, match="epsilon"):
            ledger.charge(JOB_A, float("nan"), 0.0)
        with pytest.raises(ConfigError, match="delta"):
            ledger.check_can_start(JOB_A, 1.0, 1.5)
