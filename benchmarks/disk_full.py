"""Disk full mid-run (issue 11, item 4): every store commit, audit append and checkpoint
write of a deployed heart run fails in turn with ENOSPC; then space comes back and the run
resumes. Counts what matters: clean stops, audit entries or rounds lost (the study's
audit.log and runs.db cross-checked), resumed models identical to an uninterrupted run,
and tails cut from audit.log that ``audit verify`` misses.

    PYTHONPATH=src:. .venv/bin/python benchmarks/disk_full.py [--hits 1,3,7,15]

Runs in one process (the in-process deployment of tests/net/test_coordinator_driver.py:
driver, runs.db, audit.log and four heart sites); a real full tmpfs is covered by
tests/net/test_storage_failures.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fedcare.core import faults
from fedcare.net.audit_crosscheck import cross_check
from fedcare.net.store import COMMIT_POINTS, RunStore
from fedcare.runtime.audit import APPEND_POINT as AUDIT_APPEND
from fedcare.runtime.checkpoint import WRITE_POINT as CHECKPOINT_WRITE
from tests.net.test_storage_failures import Recorded

# The points just before a write (where a full disk refuses it); the points after a write
# and before a send are crash points (benchmarks/crash_soak.py --walk), not disk-full ones.
POINTS = [
    *(p for p in COMMIT_POINTS.values() if not p.endswith("create_run")),
    AUDIT_APPEND,
    CHECKPOINT_WRITE,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", default="1,2,4,8,16,32")
    args = parser.parse_args()
    hits = [int(h) for h in args.hits.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clean = Recorded(root / "clean")
        clean.run()
        reference = clean.model()
        staged = stopped = disagree = identical = lost_rounds = refused = 0
        cuts = cuts_caught = 0
        for point in POINTS:
            for hit in hits:
                run = Recorded(root / f"{point}-{hit}")
                faults.reset_for_tests(f"{point}@{hit}:enospc")
                run.run()
                faults.reset_for_tests(None)
                if run.driver.storage_failure is None:
                    continue  # the run ended before that many hits
                staged += 1
                stopped += run.driver.outcome().status == "stopped"
                disagree += bool(run.agreement())
                with RunStore.in_folder(run.folder) as store:
                    before = {r.round for r in store.rounds("run-1") if r.status == "finished"}
                try:
                    run.resume()
                except Exception as exc:  # counted and named, not hidden
                    print(f"  {point}@{hit}: resume refused: {exc}")
                    refused += 1
                    continue
                with RunStore.in_folder(run.folder) as store:
                    after = {r.round for r in store.rounds("run-1") if r.status == "finished"}
                lost_rounds += len(before - after)
                disagree += bool(run.agreement())
                same = run.driver.outcome().status == "finished" and np.array_equal(
                    run.model(), reference
                )
                identical += same
                if not same:
                    print(f"  {point}@{hit}: resumed run {run.driver.outcome().status}, differs")
                # Cut 1..3 entries from the end of the finished log: verify must notice.
                log = run.folder / "audit.log"
                full = log.read_bytes().splitlines(keepends=True)
                for k in (1, 2, 3):
                    log.write_bytes(b"".join(full[:-k]))
                    with RunStore.in_folder(run.folder) as store:
                        cuts += 1
                        cuts_caught += bool(cross_check(log, store))
                log.write_bytes(b"".join(full))
    print(f"fault points walked: {len(POINTS)} x hits {hits}; disk-full stops staged: {staged}")
    print(f"stopped cleanly (status stopped, message naming the file): {stopped}/{staged}")
    print(f"store/audit disagreements (lost or extra entries), before or after resume: {disagree}")
    print(f"finished rounds lost by resume: {lost_rounds}; resumes refused: {refused}")
    print(f"resumed to the identical model (bit for bit): {identical}/{staged}")
    print(
        f"audit.log tails cut (1-3 entries) detected by verify's cross-check: {cuts_caught}/{cuts}"
    )


if __name__ == "__main__":
    main()
