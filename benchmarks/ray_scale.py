"""Ray backend at scale: fedcare in process vs fedcare on Ray vs Flower 1.41 (also Ray).

Workload (issue 12): synthetic sites x 50 rows x 20 features (fedcare's `synthetic`
dataset, one shared teacher), MLP 20-64-64-1, one local epoch of batch 32, SGD lr 0.05,
FedAvg, 3 rounds, every site every round, no evaluation rounds. For each site count:

Times are seconds spent in rounds (from the first round's start to the last round's
aggregate), as Flower's are; building the run and the final evaluation are left out.

- fedcare in process (`--backend inprocess`), medians of --repeats runs;
- fedcare on a local Ray instance with 2 CPUs (`--backend ray`): chunks of 256 sites as
  Ray tasks, the workers rebuilding the data from the recipe; the first run pays for
  starting the workers and loading the data there (reported apart), the median is over
  the warm runs. The final model is compared with the in-process one (max abs diff);
  peak memory is the sum of the RSS of every process of the run (driver, gcs_server,
  raylet, workers and Ray's helpers), sampled every 0.1 s with psutil;
- Flower 1.41 `run_simulation` (its own Ray, one CPU per client) in its own virtualenv
  (`--flower-python`, default /work/venvs/flower/bin/python) on the same rows, written to
  an .npz file; its whole process tree is sampled the same way.

    python benchmarks/ray_scale.py --sites 1000 10000 --repeats 3 --flower
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

    def sample(self) -> int:
        total = 0
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
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


def timed(run: Callable[[], RunResult]) -> tuple[float, RunResult]:
    """Seconds in rounds (what Flower reports too): without building the run or the final
    evaluation of every site's test rows, which both backends do in the driver."""
    result = run()
    return sum(r.seconds for r in result.history), result


def run_inprocess(sites: int, rounds: int, repeats: int) -> dict[str, Any]:
    recipe = recipe_for(sites, rounds)
    dataset = recipe.load_dataset()
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(lambda: recipe.build(dataset).run())
        times.append(seconds)
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
    assert result is not None
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
        "--flower-max-sites",
        type=int,
        default=10**9,
        help="skip Flower above this many sites (it takes minutes per thousand updates)",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.rounds} rounds; sites x {ROWS} rows x {FEATURES} features")

    import ray

    from fedcare.sim.backends.ray_backend import RayBackend

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    with RayBackend() as backend:
        on_ray = {n: run_ray(backend, n, args.rounds, args.repeats) for n in args.sites}
    ray.shutdown()
    # After Ray: the driver's RSS above then holds nothing from the in-process runs.
    inprocess = {n: run_inprocess(n, args.rounds, args.repeats) for n in args.sites}

    flower: dict[int, dict[str, Any] | None] = {}
    if args.flower:
        for n in args.sites:
            flower[n] = (
                run_flower(args.flower_python, n, args.rounds)
                if n <= args.flower_max_sites
                else None
            )

    print()
    print("| sites | engine | seconds (median) | site updates / s | vs in-process | peak RSS |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in args.sites:
        updates = n * args.rounds
        base = statistics.median(inprocess[n]["seconds"])
        ray_run = on_ray[n]
        ray_s = statistics.median(ray_run["seconds"])
        diff = float(np.max(np.abs(ray_run["params"] - inprocess[n]["params"])))
        print(f"| {n:,} | fedcare in process | {base:.2f} | {updates / base:,.0f} | 1.00 | - |")
        print(
            f"| {n:,} | fedcare on Ray (2 CPUs) | {ray_s:.2f} (cold {ray_run['cold_seconds']:.2f})"
            f" | {updates / ray_s:,.0f} | {base / ray_s:.2f} | {ray_run['peak_rss_mb']:,.0f} MB |"
        )
        fl = flower.get(n)
        if fl is not None:
            fl_s = float(fl["seconds_rounds"])
            print(
                f"| {n:,} | Flower {fl['version']} (Ray) | {fl_s:.2f} rounds "
                f"({fl['seconds_total']:.2f} total) | {updates / fl_s:,.0f} | {base / fl_s:.3f}"
                f" | {fl['peak_rss_mb']:,.0f} MB |"
            )
        print(f"|  | Ray vs in-process final model: max abs diff {diff:.2e} | | | | |")


if __name__ == "__main__":
    sys.exit(main())
