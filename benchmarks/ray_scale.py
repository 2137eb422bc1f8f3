"""Ray backend at scale: fedcare in process vs fedcare on Ray vs Flower 1.41 (also Ray).

Workload (issue 12): synthetic sites x 50 rows x 20 features (fedcare's `synthetic`
dataset, one shared teacher), MLP 20-64-64-1, one local epoch of batch 32, SGD lr 0.05,
FedAvg, 3 rounds, every site every round, no evaluation rounds. For each site count:

Times are seconds spent in rounds (from the first round's start to the last round's
aggregate), as Flower's are; building the run and the final evaluation are left out.

- fedcare in process (`--backend inprocess`), medians of --repeats runs, once per
  `--inprocess-threads` value (torch's intra-op threads; each Ray task runs with one, and
  on a machine other jobs load, two threads can be many times slower than one);
- fedcare on a local Ray instance with 2 CPUs (`--backend ray`): chunks of 256 sites as
  Ray tasks, the workers rebuilding the data from the recipe; the first run pays for
  starting the workers and loading the data there (reported apart), the median is over
  the warm runs. The final model is compared with the in-process one (max abs diff);
  peak memory is the sum of the RSS of every process of the run (driver, gcs_server,
  raylet, workers and Ray's helpers), sampled every 0.1 s with psutil;
- Flower 1.41 `run_simulation` (its own Ray, one CPU per client) in its own virtualenv
  (`--flower-python`, default /work/venvs/flower/bin/python) on the same rows, written to
  an .npz file; its whole process tree is sampled the same way.

    python benchmarks/ray_scale.py --sites 1000 10000 --repeats 3 --inprocess-threads 2 1 \
        --flower --flower-rounds 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from fedcare.core.records import TrainSpec
from fedcare.sim.backends.recipe import SimulationRecipe
from fedcare.sim.engine import RunResult

SPEC = TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=32)
ROWS, FEATURES, CHUNK = 50, 20, 256
FLOWER = Path("/work/venvs/flower/bin/python")


def recipe_for(sites: int, rounds: int, seed: int = 0) -> SimulationRecipe:
    return SimulationRecipe(
        dataset="synthetic",
        dataset_params={"num_sites": sites, "samples_per_site": ROWS, "num_features": FEATURES},
        model="mlp",
        model_params={"hidden": [64, 64]},
        strategy="fedavg",
        spec=SPEC,
        rounds=rounds,
        seed=seed,
        mode="batched",
        site_chunk=CHUNK,
    )


@dataclass
class PeakRss:
    """The largest sum of RSS over a process tree, sampled on a thread."""

    root: psutil.Process
    interval_s: float = 0.1
    peak_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    peak_parts: dict[str, float] = field(default_factory=dict)  # process kind -> MB at the peak

    def sample(self) -> tuple[int, dict[str, float]]:
        total, parts = 0, {}
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0, {}
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                kind = _kind(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            parts[kind] = parts.get(kind, 0.0) + rss / 2**20
        return total, parts

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, parts = self.sample()
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_parts = total, parts
            self._stop.wait(self.interval_s)

    @contextmanager
    def running(self) -> Iterator[PeakRss]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def _kind(proc: psutil.Process) -> str:
    """A process's role, for the peak memory breakdown (Ray names its workers' titles)."""
    name = proc.name()
    if name.startswith("ray::"):
        return "ray workers"
    if name in ("raylet", "gcs_server"):
        return name
    if proc.pid == os.getpid():
        return "driver"
    return "other" if "python" not in name else "python helpers"


def timed(run: Callable[[], RunResult]) -> tuple[float, RunResult]:
    """Seconds in rounds (what Flower reports too): without building the run or the final
    evaluation of every site's test rows, which both backends do in the driver."""
    result = run()
    return sum(r.seconds for r in result.history), result


def run_inprocess(sites: int, rounds: int, repeats: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    recipe = recipe_for(sites, rounds)
    dataset = recipe.load_dataset()
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(lambda: recipe.build(dataset).run())
        times.append(seconds)
        print(f"  in process ({threads} threads), {sites:,} sites: {seconds:.2f} s", flush=True)
    assert result is not None
    return {"seconds": times, "params": result.final_params[0]}


def run_ray(backend: Any, sites: int, rounds: int, repeats: int) -> dict[str, Any]:
    recipe = recipe_for(sites, rounds)
    dataset = recipe.load_dataset()  # the driver's own copy: sampling, evaluation
    times, result = [], None
    meter = PeakRss(psutil.Process())
    with meter.running():
        for _ in range(repeats + 1):  # the first run starts the workers and loads their data
            seconds, result = timed(
                lambda: recipe.build(dataset, backend=backend.for_run(recipe)).run()
            )
            times.append(seconds)
            print(f"  on Ray, {sites:,} sites: {seconds:.2f} s in rounds", flush=True)
    assert result is not None
    parts = ", ".join(f"{k} {v:,.0f} MB" for k, v in sorted(meter.peak_parts.items()))
    print(f"  on Ray, {sites:,} sites: peak RSS {meter.peak_bytes / 2**20:,.0f} MB ({parts})")
    return {
        "cold_seconds": times[0],
        "seconds": times[1:],
        "params": result.final_params[0],
        "peak_rss_mb": meter.peak_bytes / 2**20,
    }


def run_flower(python: Path, sites: int, rounds: int) -> dict[str, Any] | None:
    if not python.exists():
        print(f"  (Flower skipped: no {python}; see benchmarks/README.md)")
        return None
    data = recipe_for(sites, rounds).load_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sites.npz"
        np.savez(
            path,
            x_train=np.stack([s.x_train for s in data.sites]),
            y_train=np.stack([s.y_train for s in data.sites]),
            x_test=np.stack([s.x_test for s in data.sites]),
            y_test=np.stack([s.y_test for s in data.sites]),
        )
        script = Path(__file__).parent / "flower_sim.py"
        cmd = [str(python), str(script), "--npz", str(path), "--rounds", str(rounds)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        meter = PeakRss(psutil.Process(proc.pid))
        with meter.running():
            out, err = proc.communicate(timeout=7200)
    lines = [ln for ln in out.splitlines() if ln.startswith("FLOWER_RESULT ")]
    if proc.returncode != 0 or not lines:
        print(out[-2000:], err[-4000:])
        return None
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("FLOWER_RESULT "))
    result["peak_rss_mb"] = meter.peak_bytes / 2**20
    print(f"  Flower, {sites:,} sites: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flower", action="store_true", help="also run Flower 1.41")
    parser.add_argument("--flower-python", type=Path, default=FLOWER)
    parser.add_argument(
        "--flower-rounds",
        type=int,
        default=None,
        help="rounds for Flower (default --rounds); its updates/s is over its own rounds",
    )
    parser.add_argument(
        "--flower-max-sites",
        type=int,
        default=10**9,
        help="skip Flower above this many sites (it takes minutes per thousand updates)",
    )
    parser.add_argument(
        "--inprocess-threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch threads of the in-process runs (each Ray task uses 1); one row each",
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f};", end=" ")
    print(f"{os.cpu_count()} CPUs; {args.rounds} rounds; sites x {ROWS} rows x {FEATURES} features")

    import ray

    from fedcare.sim.backends.ray_backend import RayBackend

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    with RayBackend() as backend:
        on_ray = {n: run_ray(backend, n, args.rounds, args.repeats) for n in args.sites}
    ray.shutdown()
    # After Ray: the driver's RSS above then holds nothing from the in-process runs.
    inprocess = {
        (n, t): run_inprocess(n, args.rounds, args.repeats, t)
        for n in args.sites
        for t in args.inprocess_threads
    }

    flower: dict[int, dict[str, Any] | None] = {}
    if args.flower:
        for n in args.sites:
            flower[n] = (
                run_flower(args.flower_python, n, args.flower_rounds or args.rounds)
                if n <= args.flower_max_sites
                else None
            )

    print()
    print("| sites | engine | seconds in rounds | site updates / s | vs in-process | peak RSS |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in args.sites:
        updates = n * args.rounds
        # The baseline of the ratios: the in-process run with torch's default threads.
        first = inprocess[(n, args.inprocess_threads[0])]
        base = statistics.median(first["seconds"])
        for t in args.inprocess_threads:
            own = statistics.median(inprocess[(n, t)]["seconds"])
            print(
                f"| {n:,} | fedcare in process, {t} torch thread(s) | {own:.2f} | "
                f"{updates / own:,.0f} | {base / own:.2f} | - |"
            )
        ray_run = on_ray[n]
        ray_s = statistics.median(ray_run["seconds"])
        diff = float(np.max(np.abs(ray_run["params"] - first["params"])))
        print(
            f"| {n:,} | fedcare on Ray (2 CPUs) | {ray_s:.2f} (cold {ray_run['cold_seconds']:.2f})"
            f" | {updates / ray_s:,.0f} | {base / ray_s:.2f} | {ray_run['peak_rss_mb']:,.0f} MB |"
        )
        fl = flower.get(n)
        if fl is not None:
            fl_s = float(fl["seconds_rounds"])
            fl_updates = n * (args.flower_rounds or args.rounds)
            print(
                f"| {n:,} | Flower {fl['version']} (Ray) | {fl_s:.2f} rounds "
                f"({fl['seconds_total']:.2f} total) | {fl_updates / fl_s:,.0f} | "
                f"{(fl_updates / fl_s) / (updates / base):.3f} | {fl['peak_rss_mb']:,.0f} MB |"
            )
        print(f"|  | Ray vs in-process final model: max abs diff {diff:.2e} | | | | |")


if __name__ == "__main__":
    sys.exit(main())
