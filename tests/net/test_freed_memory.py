"""The coordinator hands the transport's freed buffers back to the operating system before
it folds a round's mean (glibc keeps them in per-thread arenas otherwise)."""

import threading
from pathlib import Path

import pytest

from fedcare.net.coordinator_server import _malloc_trim, return_freed_memory


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's")
def test_buffers_freed_on_another_thread_leave_the_process():
    def churn() -> None:
        # Many buffers below the mmap threshold, as gRPC's reads are, freed but one: the
        # last keeps the arena's top in use, so glibc cannot shrink it on its own.
        buffers = [bytearray(64 << 10) for _ in range(1600)]  # 100 MiB
        keep = buffers[-1]
        del buffers
        held.append(keep)

    held: list[bytearray] = []
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    before = resident_bytes()
    return_freed_memory()
    assert before - resident_bytes() > 50 << 20
