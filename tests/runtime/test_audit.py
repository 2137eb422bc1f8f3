"""The audit log: every kind of tampering is detected and named by entry index."""

from __future__ import annotations

import itertools
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ProtocolError
from fedcare.runtime.audit import (
    GENESIS,
    AuditEntry,
    AuditError,
    AuditLog,
    SiteAuditCopy,
    compare,
    entry_hash,
    verify,
)

COORD = Ed25519PrivateKey.generate()
VA = Ed25519PrivateKey.generate()
KEYS = {"coordinator": COORD.public_key(), "va": VA.public_key()}


def write_study_log(path, rounds: int = 3) -> AuditLog:
    """What a small deployed run writes: job, approvals, rounds with contributions, release."""
    log = AuditLog(path)
    log.append(
        "job_submitted",
        "coordinator",
        {"plan_hash": "ab" * 32, "sites": ["cleveland", "va"]},
        COORD,
    )
    log.append("plan_approved", "va", {"site": "va", "plan_hash": "ab" * 32}, VA)
    for r in range(rounds):
        log.append(
            "round_started", "coordinator", {"round": r, "sites": ["cleveland", "va"]}, COORD
        )
        log.append(
            "update_contributed",
            "coordinator",
            {"round": r, "site": "va", "hash": f"{r:064x}", "weight": 85.0},
            COORD,
        )
    log.append("model_released", "coordinator", {"hash": "cd" * 32, "broadcast": True}, COORD)
    return log


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def rewrite(path, rows: list[str]) -> None:
    path.write_text("".join(row + "\n" for row in rows))


def test_an_untouched_log_verifies_and_chains_from_genesis(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    report = verify(log.path, KEYS, expect_head=log.head())
    assert report.ok, report.summary()
    entries = log.entries()
    assert [e.index for e in entries] == list(range(9))
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert "chain intact" in report.summary()


def test_entries_are_durable_json_lines_with_every_field(tmp_path):
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    row = json.loads(lines(log.path)[1])
    assert set(row) == {"index", "time", "kind", "author", "body", "prev_hash", "hash", "signature"}
    assert row["author"] == "va"
    assert AuditEntry.from_dict(row) == log.entries()[1]


def test_an_edited_entry_is_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    row = json.loads(rows[3])
    row["body"]["hash"] = "f" * 64  # claim another update was contributed
    rows[3] = json.dumps(row)
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert report.indices() == [3]
    assert report.problems[0].kind == "edited"
    assert "entry 3" in report.summary()


def test_an_edit_with_a_recomputed_hash_fails_the_signature(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    row = json.loads(rows[4])
    row["body"]["weight"] = 1000.0
    row["hash"] = entry_hash(
        row["index"], row["time"], row["kind"], row["author"], row["body"], row["prev_hash"]
    )
    rows[4] = json.dumps(row)
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert report.indices("bad_signature") == [4]


def test_a_forged_signature_by_another_key_is_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    mallory = Ed25519PrivateKey.generate()
    rows = lines(log.path)
    row = json.loads(rows[1])  # re-sign va's approval with a key that is not va's
    row["signature"] = mallory.sign(bytes.fromhex(row["hash"])).hex()
    rows[1] = json.dumps(row)
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [(p.kind, p.index) for p in report.problems] == [("bad_signature", 1)]


def test_a_removed_entry_is_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    del rows[5]
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [(p.kind, p.index) for p in report.problems] == [("removed", 5)]
    assert "entry 5 was removed" in report.summary()


def test_removed_entries_at_the_end_need_the_expected_head(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    head = log.head()
    rewrite(log.path, lines(log.path)[:-2])
    assert verify(log.path, KEYS).ok  # a chain cannot see its own truncation...
    report = verify(log.path, KEYS, expect_head=head)  # ...a verifier holding the head can
    assert [p.kind for p in report.problems] == ["truncated"]
    assert "entries after 6 were removed" in report.summary()


def test_reordered_entries_are_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    rows[6], rows[7] = rows[7], rows[6]
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [p.kind for p in report.problems] == ["reordered"]
    assert report.indices() in ([6], [7])


def test_an_entry_moved_far_away_is_the_one_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    rows.insert(0, rows.pop(5))
    rewrite(log.path, rows)
    assert verify(log.path, KEYS).indices() == [5]


def test_a_duplicated_entry_is_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    rows = lines(log.path)
    rows.insert(4, rows[3])
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [(p.kind, p.index) for p in report.problems] == [("duplicate", 3)]


def test_an_unknown_author_is_named(tmp_path):
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    report = verify(log.path, {"coordinator": COORD.public_key()})
    assert [(p.kind, p.index) for p in report.problems] == [("unknown_author", 1)]


def test_an_entry_replaced_by_a_validly_signed_one_breaks_the_chain(tmp_path):
    """An insider with the coordinator's key rewrites one entry: the next link shows it."""
    log = write_study_log(tmp_path / "audit.log")
    entries = log.entries()
    old = entries[3]
    body = {**old.body, "hash": "e" * 64}
    digest = entry_hash(old.index, old.time, old.kind, old.author, body, old.prev_hash)
    forged = AuditEntry(
        old.index,
        old.time,
        old.kind,
        old.author,
        body,
        old.prev_hash,
        digest,
        COORD.sign(bytes.fromhex(digest)).hex(),
    )
    rows = lines(log.path)
    rows[3] = forged.to_json()
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [(p.kind, p.index) for p in report.problems] == [("chain_broken", 4)]


def test_garbage_lines_are_reported_by_line_number(tmp_path):
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    rows = lines(log.path)
    rows.insert(2, "not json")
    rewrite(log.path, rows)
    report = verify(log.path, KEYS)
    assert [(p.kind, p.line) for p in report.problems] == [("unreadable", 3)]


def test_a_torn_final_write_is_discarded_on_the_next_append(tmp_path):
    """kill -9 in the middle of a write leaves half a line that was never acknowledged."""
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    with open(log.path, "ab") as fh:
        fh.write(b'{"index": 5, "time": "2')
    entry = AuditLog(log.path).append("round_started", "coordinator", {"round": 1}, COORD)
    assert entry.index == 5
    assert verify(log.path, KEYS).ok


def test_two_writers_of_one_log_never_fork_the_chain(tmp_path):
    first, second = AuditLog(tmp_path / "a.log"), AuditLog(tmp_path / "a.log")
    for r in range(4):
        (first if r % 2 else second).append("round_started", "coordinator", {"round": r}, COORD)
    assert [e.index for e in first.entries()] == [0, 1, 2, 3]
    assert verify(first.path, KEYS).ok


def test_entries_concerning_a_site(tmp_path):
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    kinds = [e.kind for e in log.entries_concerning("va")]
    assert kinds == [
        "job_submitted",
        "plan_approved",
        "round_started",
        "update_contributed",
        "model_released",
    ]
    assert [e.kind for e in log.entries_concerning("basel")] == ["model_released"]


def test_a_site_copy_verifies_and_exposes_a_rewritten_coordinator_log(tmp_path):
    log = write_study_log(tmp_path / "audit.log")
    copy = SiteAuditCopy(tmp_path / "va-audit.log", "va")
    for entry in log.entries_concerning("va"):
        copy.add(entry.to_dict(), KEYS)
    copy.add(log.entries()[1], KEYS)  # delivered twice after a reconnect: kept once
    assert len(copy.entries()) == len(log.entries_concerning("va"))
    assert verify(copy.path, KEYS, partial=True).ok
    assert compare(log.path, copy.path, "va") == []

    # The coordinator drops entry 4 and re-signs the rest of the chain with its own key:
    # the chain verifies, but the site's copy proves the rewrite.
    rewritten = AuditLog(tmp_path / "rewritten.log")
    for entry in log.entries():
        if entry.index != 4:
            key = VA if entry.author == "va" else COORD
            rewritten.append(entry.kind, entry.author, entry.body, key, time=entry.time)
    assert verify(rewritten.path, KEYS).ok
    problems = compare(rewritten.path, copy.path, "va")
    assert [p.index for p in problems] == [4, 5, 6, 7, 8]  # every entry from the rewrite on
    assert problems[0].kind == "differs"
    assert "site 'va'" in problems[0].message


def test_entries_a_site_keeps_between_two_sends_share_one_fsync(tmp_path, monkeypatch):
    log = write_study_log(tmp_path / "audit.log")
    copy = SiteAuditCopy(tmp_path / "va-audit.log", "va")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    first, second = log.entries_concerning("va")[:2]
    copy.add(first, KEYS, sync=False)
    copy.add(second, KEYS, sync=False)
    assert synced == [] and copy.unsynced
    assert [e.hash for e in copy.entries()] == [first.hash, second.hash]  # written, in order
    copy.sync()  # what the agent does before it sends anything
    assert len(synced) == 1 and not copy.unsynced
    copy.sync()  # nothing new: no fsync
    assert len(synced) == 1
    copy.add(log.entries_concerning("va")[2], KEYS)  # the default: durable on return
    assert len(synced) == 2 and not copy.unsynced


def test_a_batch_that_appends_nothing_leaves_the_log_untouched(tmp_path):
    log = AuditLog(tmp_path / "audit" / "audit.log")
    with log.batch():  # a driver step with no audited event (e.g. a timer tick)
        pass
    assert not log.path.parent.exists()
    log.path.parent.mkdir()
    log.path.write_bytes(b"not an entry\n")  # an unreadable tail is only read to append
    with log.batch():
        pass
    with pytest.raises(AuditError, match="the last entry is unreadable"), log.batch():
        log.append("round_started", "coordinator", {"round": 0}, COORD)


def test_a_site_refuses_to_store_a_forged_or_foreign_entry(tmp_path):
    log = write_study_log(tmp_path / "audit.log", rounds=1)
    copy = SiteAuditCopy(tmp_path / "copy.log", "va")
    entry = log.entries()[2].to_dict()
    with pytest.raises(ProtocolError, match="not signed by a known key"):
        copy.add(entry, {"coordinator": VA.public_key()})
    with pytest.raises(ProtocolError, match="does not match its hash"):
        copy.add({**entry, "kind": "model_released"}, KEYS)
    with pytest.raises(ProtocolError, match="does not concern site 'basel'"):
        SiteAuditCopy(tmp_path / "basel.log", "basel").add(log.entries()[3], KEYS)
    copy.add(log.entries()[3], KEYS)
    with pytest.raises(ProtocolError, match="arrived after entry 3"):
        copy.add(log.entries()[2], KEYS)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=10),
    data=st.data(),
)
def test_any_single_removal_or_swap_is_named(tmp_path_factory, n, data):
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    log = AuditLog(path)
    for r in range(n):
        log.append("round_started", "coordinator", {"round": r}, COORD)
    rows = lines(path)
    i = data.draw(st.integers(min_value=0, max_value=n - 2), label="position")
    if data.draw(st.booleans(), label="swap"):
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
        rewrite(path, rows)
        report = verify(path, KEYS)
        assert [p.kind for p in report.problems] == ["reordered"]
        assert set(report.indices()) <= {i, i + 1}
    else:
        del rows[i]
        rewrite(path, rows)
        assert verify(path, KEYS).indices("removed") == [i]


# -- `fedcare audit` ----------------------------------------------------------------------


def write_keys(tmp_path) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    args = []
    for name, key in (("coordinator", COORD), ("va", VA)):
        path = tmp_path / f"{name}.pub"
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        args += ["--key", f"{name}={path}"]
    return args


def test_audit_cli_verify_says_ok_or_names_the_tampered_entry(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.audit import app

    runner = CliRunner()
    log = write_study_log(tmp_path / "audit.log")
    keys = write_keys(tmp_path)
    ok = runner.invoke(app, ["verify", str(log.path), *keys, "--expect-head", log.head()])
    assert ok.exit_code == 0, ok.output
    assert "chain intact" in ok.output

    rows = lines(log.path)
    del rows[2]
    rewrite(log.path, rows)
    bad = runner.invoke(app, ["verify", str(log.path), *keys])
    assert bad.exit_code == 1
    assert "entry 2 was removed" in bad.output


def test_audit_cli_compares_a_site_copy_with_the_log(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.audit import app

    log = write_study_log(tmp_path / "audit.log", rounds=1)
    copy = SiteAuditCopy(tmp_path / "va.log", "va")
    for entry in log.entries_concerning("va"):
        copy.add(entry, KEYS)
    keys = write_keys(tmp_path)
    args = ["verify", str(copy.path), "--copy", "va", "--against", str(log.path), *keys]
    assert CliRunner().invoke(app, args).exit_code == 0
    rewrite(log.path, lines(log.path)[:-1])  # the coordinator cuts the released model
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "missing from the log" in result.output


def test_audit_cli_show_filters_by_site(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.audit import app

    log = write_study_log(tmp_path / "audit.log", rounds=1)
    result = CliRunner().invoke(app, ["show", str(log.path), "--site", "basel", "--json"])
    assert result.exit_code == 0
    shown = [json.loads(row) for row in result.output.splitlines()]
    assert [row["kind"] for row in shown] == ["model_released"]


def test_audit_cli_without_keys_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.audit import app

    log = write_study_log(tmp_path / "audit.log", rounds=1)
    result = CliRunner().invoke(app, ["verify", str(log.path)])
    assert result.exit_code == 2
    assert "no public keys" in result.output


def test_audit_cli_takes_every_partys_key_from_the_study_ca(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.audit import app
    from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle, revoke

    ca = init_study_ca(tmp_path / "ca", "heart")
    issue_bundle(ca, "coordinator", tmp_path / "coordinator", "coordinator")
    issue_bundle(ca, "va", tmp_path / "va", "site")
    coord, va = TlsBundle.load(tmp_path / "coordinator"), TlsBundle.load(tmp_path / "va")
    log = AuditLog(tmp_path / "audit.log")
    log.append("job_submitted", "coordinator", {"sites": ["va"]}, coord.signing_private_key())
    log.append("plan_approved", "va", {"site": "va"}, va.signing_private_key())
    revoke(ca, "va")  # what va signed before its revocation still verifies
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(log.path), "--ca-dir", str(ca)])
    assert result.exit_code == 0, result.output
    only_va = runner.invoke(app, ["verify", str(log.path), "--bundle", str(tmp_path / "va")])
    assert only_va.exit_code == 1
    assert "unknown author 'coordinator'" in only_va.output
    from_cert = runner.invoke(
        app,
        [
            "verify",
            str(log.path),
            "--bundle",
            str(tmp_path / "va"),
            "--key",
            f"coordinator={tmp_path / 'coordinator' / 'cert.pem'}",
        ],
    )
    assert from_cert.exit_code == 0, from_cert.output
