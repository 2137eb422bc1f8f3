"""A full disk at a hospital: the site agent stops with a message naming the file, and its
state file and audit copy are left as they were."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.core import faults
from fedcare.core.storage import StorageError
from fedcare.data.registry import load_dataset
from fedcare.net.site_agent import STATE_FILE, SiteAgent, save_site_state
from fedcare.net.site_training import site_training
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.audit import AuditLog, SiteAuditCopy
from fedcare.runtime.site import DataCheck, SiteMachine


@pytest.fixture(autouse=True)
def no_fault_left() -> Iterator[None]:
    yield
    faults.reset_for_tests(None)


def _machine(state: Path) -> SiteMachine:
    data = load_dataset("heart-disease").sites[0]
    approvals = ApprovalStore(state / "approvals.json")
    check = DataCheck(True, {"num_train": data.num_train}, [])
    return SiteMachine(data.name, approvals, check, site_training(data), coordinator="c")


def test_a_full_disk_while_saving_the_state_stops_the_agent_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    machine = _machine(state)
    save_site_state(state, machine)
    before = (state / STATE_FILE).read_bytes()
    lines: list[str] = []
    agent = SiteAgent(machine, "127.0.0.1:1", bundle=None, state_dir=state, log=lines.append)

    def connect_then_save(stop: threading.Event) -> None:  # the write the next message needs
        save_site_state(state, machine)

    agent._connect_once = connect_then_save  # type: ignore[method-assign]
    faults.reset_for_tests("site.state.write@1:enospc")
    with pytest.raises(StorageError) as raised:
        agent.run()

    assert str(raised.value).startswith(
        f"cannot write '{state / STATE_FILE}': no space left on the device"
    )
    (stopped,) = [line for line in lines if line.startswith("STOPPED: ")]
    assert f"site '{machine.name}'" in stopped and "start this agent again" in stopped
    assert (state / STATE_FILE).read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == [STATE_FILE], "a temporary file was left"


def test_a_full_disk_while_keeping_an_audit_entry_leaves_the_copy_as_it_was(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path / "audit.log")
    first = log.append("round_started", "coordinator", {"sites": ["va"]}, key)
    second = log.append("round_completed", "coordinator", {"sites": ["va"]}, key)
    copy = SiteAuditCopy(tmp_path / "copy.log", "va")
    copy.add(first, {"coordinator": key.public_key()})
    before = copy.path.read_bytes()

    faults.reset_for_tests("site.audit.append@1:enospc")
    with pytest.raises(OSError, match="No space left") as raised:
        copy.add(second, {"coordinator": key.public_key()})
    assert raised.value.filename == str(copy.path)
    assert copy.path.read_bytes() == before
    faults.reset_for_tests(None)
    copy.add(second, {"coordinator": key.public_key()})
    assert [e.index for e in copy.entries()] == [0, 1]
