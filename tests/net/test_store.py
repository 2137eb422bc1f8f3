"""The run store: what `fedcare coordinator status` and `resume` read back."""

from __future__ import annotations

import sqlite3

import pytest

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.net.store import RunStore, StoreError, sqlite_url

CONFIG = {"name": "heart", "rounds": 3, "local": {"lr": 0.05}}


@pytest.fixture
def store(tmp_path):
    with RunStore.in_folder(tmp_path / "study") as s:
        yield s


def run_two_rounds(store: RunStore) -> None:
    store.create_run("run-1", "heart", "ab" * 32, CONFIG)
    store.start_round("run-1", 0, ["cleveland", "hungarian", "va"])
    store.record_participant(
        "run-1", 0, "cleveland", "contributed", update_hash="1" * 64, nbytes=56
    )
    store.record_participant("run-1", 0, "hungarian", "rejected", reason="non-finite values")
    store.record_participant("run-1", 0, "va", "dropped", reason="missed the 30 s deadline")
    store.finish_round("run-1", 0, {"loss": 0.61, "accuracy": {"cleveland": 0.8, "va": 0.7}})
    store.start_round("run-1", 1, ["cleveland", "va"])
    store.record_participant(
        "run-1", 1, "cleveland", "contributed", update_hash="2" * 64, nbytes=56
    )


def test_a_run_round_trips_through_sqlite(store):
    run_two_rounds(store)
    run = store.run("run-1")
    assert (run.study, run.plan_hash, run.config, run.status) == (
        "heart",
        "ab" * 32,
        CONFIG,
        "running",
    )
    rounds = store.rounds("run-1")
    assert [(r.round, r.status) for r in rounds] == [(0, "finished"), (1, "running")]
    first = rounds[0]
    assert first.sites == ["cleveland", "hungarian", "va"]
    assert first.by_status("contributed") == ["cleveland"]
    assert first.by_status("rejected") == ["hungarian"]
    assert {p.site: p.reason for p in first.participants}["va"] == "missed the 30 s deadline"
    assert first.metrics == {"loss": 0.61, "accuracy": {"cleveland": 0.8, "va": 0.7}}
    assert rounds[1].by_status("sampled") == ["va"]  # still waiting for va's update
    assert store.last_finished_round("run-1") == 0


def test_numbers_land_in_the_metrics_table_per_site(store):
    run_two_rounds(store)
    rows = {(m.name, m.site): m.value for m in store.metrics("run-1")}
    assert rows == {("loss", None): 0.61, ("accuracy", "cleveland"): 0.8, ("accuracy", "va"): 0.7}
    assert [m.site for m in store.metrics("run-1", name="accuracy")] == ["cleveland", "va"]


def test_the_database_is_in_wal_mode_so_status_reads_beside_the_coordinator(store, tmp_path):
    run_two_rounds(store)
    assert store.journal_mode == "wal"
    path = tmp_path / "study" / "runs.db"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A second store (another process, e.g. `fedcare coordinator status`) sees everything.
    with RunStore(sqlite_url(path)) as reader:
        assert [r.run_id for r in reader.runs()] == ["run-1"]
        assert reader.rounds("run-1")[0].by_status("contributed") == ["cleveland"]


def test_events_and_site_status_are_kept_in_order(store):
    store.create_run("run-1", "heart", "ab" * 32, CONFIG)
    store.record_event("run-1", "site_connected", "va", {"rows": 130})
    store.record_event(
        "run-1", "update_rejected", "va", {"round": 0, "reason": "size 12, expected 14"}
    )
    assert [(e.kind, e.site) for e in store.events("run-1")] == [
        ("site_connected", "va"),
        ("update_rejected", "va"),
    ]
    assert (
        store.events("run-1", kind="update_rejected")[0].detail["reason"] == "size 12, expected 14"
    )
    store.set_site_status("run-1", "va", "waiting_approval", "plan " + "ab" * 32)
    store.set_site_status("run-1", "cleveland", "approved")
    store.set_site_status("run-1", "va", "approved")
    assert [(s.site, s.status) for s in store.sites("run-1")] == [
        ("cleveland", "approved"),
        ("va", "approved"),
    ]


def test_restarting_an_unfinished_round_resets_it_but_a_finished_round_is_final(store):
    run_two_rounds(store)
    store.start_round("run-1", 1, ["hungarian", "va"])  # the coordinator resumed mid-round 1
    again = store.rounds("run-1")[1]
    assert again.sites == ["hungarian", "va"]
    assert again.by_status("sampled") == ["hungarian", "va"]
    with pytest.raises(ProtocolError, match="round 0 is already finished"):
        store.start_round("run-1", 0, ["va"])


def test_status_changes_are_persisted_and_checked(store):
    store.create_run("run-1", "heart", "ab" * 32, CONFIG)
    store.set_status("run-1", "finished")
    assert store.run("run-1").status == "finished"
    with pytest.raises(ConfigError, match="run status must be one of"):
        store.set_status("run-1", "done-ish")


def test_unknown_runs_and_rounds_are_errors_that_name_them(store):
    store.create_run("run-1", "heart", "ab" * 32, CONFIG)
    with pytest.raises(StoreError, match=r"no run 'run-9'.*runs: run-1"):
        store.run("run-9")
    with pytest.raises(StoreError, match="has no round 4; call start_round first"):
        store.record_participant("run-1", 4, "va", "contributed")
    with pytest.raises(StoreError, match="no round 4 to finish"):
        store.finish_round("run-1", 4, {})
    with pytest.raises(StoreError, match="no run 'run-9'"):
        store.record_event("run-9", "x")
    with pytest.raises(ProtocolError, match="already exists"):
        store.create_run("run-1", "heart", "ab" * 32, CONFIG)


def test_values_json_cannot_carry_are_refused(store):
    with pytest.raises(ConfigError, match="config must be JSON data"):
        store.create_run("run-1", "heart", "ab" * 32, {"lr": float("nan")})


def test_an_unusable_url_is_a_store_error():
    with pytest.raises(StoreError, match="cannot open run store"):
        RunStore("nosuchdialect://x")


def test_the_schema_uses_only_types_postgresql_has():
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from fedcare.net.store import runs_table, sites_table

    for table in (runs_table, sites_table):
        ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
        assert "PRIMARY KEY" in ddl
        assert "JSON" not in ddl  # JSON travels as TEXT on every backend


def test_a_restarted_coordinators_store_records_participants_of_a_round_it_did_not_start(
    tmp_path,
):
    with RunStore.in_folder(tmp_path / "study") as before_the_crash:
        before_the_crash.create_run("run-1", "heart", "ab" * 32, CONFIG)
        before_the_crash.start_round("run-1", 0, ["cleveland", "va"])
    with RunStore.in_folder(tmp_path / "study") as resumed:
        resumed.record_participant("run-1", 0, "va", "contributed", update_hash="3" * 64)
        resumed.record_participant("run-1", 0, "basel", "dropped", reason="not sampled")
        with pytest.raises(StoreError, match="has no round 1; call start_round first"):
            resumed.record_participant("run-1", 1, "va", "contributed")
        (round_0,) = resumed.rounds("run-1")
    assert [(p.site, p.status, p.update_hash) for p in round_0.participants] == [
        ("basel", "dropped", None),
        ("cleveland", "sampled", None),
        ("va", "contributed", "3" * 64),
    ]
