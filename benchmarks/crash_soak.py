"""Random-kill soak: kill -9 the coordinator (and a site) at random moments, resume, compare.

Each run deploys the small heart study of tests/e2e/crash_harness.py (a coordinator
process, four site agents over loopback mTLS, SCAFFOLD, 3 rounds), sends SIGKILL to the
coordinator from outside at a uniformly random moment of the run, resumes it with
``fedcare coordinator resume`` and compares the final model with an uninterrupted run's,
bit for bit, and checks that runs.db, the checkpoint and the audit log agree (and that
``audit verify`` passes). ``--site-runs`` runs also SIGKILL the site 'va' (a process) at
another random moment and restart it. ``--walk`` instead kills at every declared fault
point (the full list tests/e2e/test_crash_points.py samples in CI).

    python benchmarks/crash_soak.py --runs 100 --site-runs 20
    python benchmarks/crash_soak.py --walk

Prints: finished with the identical model / unresumable / silent divergences, and the
median seconds per run.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.crash_harness import SITES, Crashable
from tests.e2e.test_crash_points import (
    COORDINATOR_HITS,
    SITE_HITS,
    VICTIM,
    walk,
)


def verdict(dep: Crashable, reference: np.ndarray, resumed_ok: bool) -> tuple[str, str]:
    """("identical" | "unresumable" | "divergent", detail)."""
    if not resumed_ok or dep.status() != "finished":
        tail = dep.log("coordinator").read_text()[-400:]
        return "unresumable", tail
    if not np.array_equal(dep.final_model(), reference):
        gap = float(np.max(np.abs(dep.final_model() - reference)))
        return "divergent", f"model differs by {gap:.3g}"
    problems = dep.problems()
    return ("divergent", "; ".join(problems)) if problems else ("identical", "")


def timed_reference(root: Path) -> tuple[np.ndarray, float]:
    """The uninterrupted model, and how long its coordinator ran once listening (the
    window where a kill can land mid-protocol)."""
    dep = Crashable.create(root)
    try:
        coordinator = dep.coordinator()  # returns once it listens
        listening = time.monotonic()
        for name in SITES:
            dep.agent(name)
        assert coordinator.wait(timeout=300) == 0, dep.log("coordinator").read_text()
        return dep.final_model(), time.monotonic() - listening
    finally:
        dep.close()


def rounds_done(dep: Crashable) -> int:
    """Rounds the coordinator had finished (its log) when it was killed."""
    path = dep.log("coordinator")
    text = path.read_text() if path.exists() else ""
    return sum(1 for line in text.splitlines() if " done: " in line and "round " in line)


def random_kill(
    root: Path, reference: np.ndarray, span: float, rng: random.Random, site: bool
) -> tuple[str, str, int | None]:
    """(verdict, detail, rounds done when the coordinator was killed; None: the run ended
    before its kill time, so nothing was killed and the identical model proves nothing)."""
    dep = Crashable.create(root)
    try:
        coordinator = dep.coordinator()
        start = time.monotonic()
        for name in SITES:
            if not (site and name == VICTIM):
                dep.agent(name)
        victim = dep.site_process(VICTIM) if site else None
        landed: int | None = None
        kills = sorted(
            [("coordinator", rng.uniform(0, span))]
            + ([("site", rng.uniform(0, span))] if site else []),
            key=lambda k: k[1],
        )
        for who, at in kills:
            time.sleep(max(start + at - time.monotonic(), 0))
            if who == "site" and victim is not None and victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                victim = dep.site_process(VICTIM)  # the hospital restarts its agent
            elif who == "coordinator" and coordinator.poll() is None:
                coordinator.send_signal(signal.SIGKILL)
                coordinator.wait()
                landed = rounds_done(dep)
        code = coordinator.wait(timeout=300)
        if code != 0:  # killed: resume it
            code = dep.coordinator(resume=True).wait(timeout=300)
        return (*verdict(dep, reference, code == 0), landed)
    finally:
        dep.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="coordinator kills")
    parser.add_argument("--site-runs", type=int, default=20, help="coordinator and site kills")
    parser.add_argument("--walk", action="store_true", help="kill at every fault point instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        base = Path(tmp)
        reference, span = timed_reference(base / "reference")
        print(
            f"reference run: {span:.1f} s from the coordinator listening to its exit "
            f"(kills land uniformly in [0, {span:.1f}] s after it listens; kills during "
            "start-up are the fault-point walk's coordinator.store.create_run)"
        )
        outcomes: dict[str, list[str]] = {}
        seconds: list[float] = []
        kills_at: list[int | None] = []  # rounds done when each coordinator kill landed
        if args.walk:
            jobs = [(p, None) for p in [*COORDINATOR_HITS, *SITE_HITS]]
        else:
            jobs = [("coordinator", False)] * args.runs + [
                ("coordinator+site", True)
            ] * args.site_runs
        for i, (label, site) in enumerate(jobs):
            root = base / f"run-{i}"
            t0 = time.monotonic()
            if site is None:
                try:
                    dep = walk(label, root)
                    result = verdict(dep, reference, True)
                except AssertionError as exc:
                    result = ("unresumable", str(exc)[-400:])
            else:
                *verdict_detail, at = random_kill(root, reference, span, rng, site)
                result = (verdict_detail[0], verdict_detail[1])
                kills_at.append(at)
            seconds.append(time.monotonic() - t0)
            outcomes.setdefault(result[0], []).append(f"{label}: {result[1]}")
            print(f"{i + 1}/{len(jobs)} {label}: {result[0]} {result[1][:200]}", flush=True)
    total = len(jobs)
    print(
        f"\n{total} runs ({'fault-point walk' if args.walk else f'{args.runs} coordinator kills, {args.site_runs} with a site killed too'}):"
    )
    for kind in ("identical", "unresumable", "divergent"):
        print(f"  {kind:<12} {len(outcomes.get(kind, []))}")
    print(f"  median seconds per run {statistics.median(seconds):.1f}")
    if kills_at:
        landed = [k for k in kills_at if k is not None]
        spread = {r: landed.count(r) for r in sorted(set(landed))}
        print(
            f"  coordinator kills that landed before the run ended: {len(landed)} of "
            f"{len(kills_at)}; by rounds already finished: {spread}"
        )
    for kind in ("unresumable", "divergent"):
        for line in outcomes.get(kind, []):
            print(f"  {kind}: {line}")


if __name__ == "__main__":
    main()
