"""The coordinator's audit log in batches: one fsync per step, the head recorded after it."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.net.recorded_audit import RecordedAuditLog
from fedcare.net.store import RunStore
from fedcare.runtime.audit import verify


def test_a_batch_chains_its_entries_and_records_the_head_once_they_are_durable(tmp_path):
    key = Ed25519PrivateKey.generate()
    with RunStore.in_folder(tmp_path) as store:
        log = RecordedAuditLog(tmp_path / "audit.log", store)
        log.append("job_submitted", "coordinator", {"run_id": "r"}, key)
        with log.batch():
            first = log.append("round_started", "coordinator", {"round": 0}, key)
            second = log.append("round_completed", "coordinator", {"round": 0}, key)
            # Written, not yet fsynced: the store still names the entry before the batch.
            assert store.audit_head("audit.log") == (1, first.prev_hash)
        assert store.audit_head("audit.log") == (3, second.hash)
        assert second.prev_hash == first.hash and second.index == 2
        assert verify(tmp_path / "audit.log", {"coordinator": key.public_key()}).ok
