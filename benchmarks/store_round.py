"""CPU time of the run-store writes of one deployed round, one source beside another.

The writes a coordinator makes in a 4-site round (events, the round's start, each site's
part, the audit log's head after each audited step, the round's finish with its metrics)
against a SQLite run store in a temporary folder, timed with process CPU time; each
source runs in its own subprocess (``--source NAME=SRC``: a fedcare ``src`` folder), the
sources alternate, and the medians and their ratio are printed.

    PYTHONPATH=src .venv/bin/python benchmarks/store_round.py \\
        --source before=/work/main/src --source after=src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SITES = ("cleveland", "hungarian", "switzerland", "va")

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from fedcare.net.store import RunStore

sites, rounds = json.loads(sys.argv[1]), int(sys.argv[2])

def one_round(store, r):
    store.record_event("run", "round_started", None, {"sampled": sites})
    store.start_round("run", r, sites)
    for site in sites:
        store.record_participant("run", r, site, "requested")
    for site in sites:
        store.record_event("run", "update_accepted", site, {"update_hash": "ab" * 32})
        store.record_participant("run", r, site, "contributed", "", "ab" * 32, 100)
        store.record_audit_head("audit.log", 10 * r + 1, "cd" * 32)
    store.record_event("run", "round_completed", None, {"round": r + 1})
    store.record_event("run", "round_finished", None, {"round": r + 1})
    store.finish_round("run", r, {"round": r + 1, "loss": 0.5, "auc": {s: 0.7 for s in sites}})
    store.record_audit_head("audit.log", 10 * r + 5, "cd" * 32)

with tempfile.TemporaryDirectory() as folder:
    store = RunStore.in_folder(Path(folder))
    store.create_run("run", "heart", "h" * 64, {})
    one_round(store, 0)  # warm-up: statement caches, the WAL file
    started = time.process_time()
    for r in range(1, rounds + 1):
        one_round(store, r)
    print(json.dumps(1000 * (time.process_time() - started) / rounds))
"""


def measure(source: str | None, rounds: int) -> float:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(SITES), str(rounds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def source_arg(text: str) -> tuple[str, str | None]:
    name, _, path = text.partition("=")
    if path and not (Path(path) / "fedcare" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(f"--source {text}: {path} holds no fedcare package")
    return name, str(Path(path).resolve()) if path else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", type=source_arg, action="append")
    args = parser.parse_args()
    sources: list[tuple[str, str | None]] = args.source or [("this", None)]
    runs: dict[str, list[float]] = {name: [] for name, _ in sources}
    for _ in range(args.repeats):
        for name, source in sources:
            runs[name].append(measure(source, args.rounds))
    medians = {name: statistics.median(v) for name, v in runs.items()}
    for name, values in runs.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: run-store CPU per round {medians[name]:.2f} ms (median; runs {shown})")
    first = sources[0][0]
    for name, _ in sources[1:]:
        print(f"{name} / {first}: {medians[name] / medians[first]:.3f}")
    print(f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
