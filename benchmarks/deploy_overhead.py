"""The heart study deployed vs simulated: wall time and final-model difference.

Deployed: ``fedcare coordinator start`` + four ``fedcare site start`` processes on loopback
with mutual TLS (plans pre-approved at each site), one training thread per site (four
agents share the machine's cores; torch's default pools would contend). Its wall time is first round started ->
last round finished, from the run store (process start-up and connecting are reported
apart). Simulated: ``FederatedSimulation.run()`` in this process, same plan and seed.
Both evaluate every site after every round. Prints medians over repeats and the ratio, and
beside it the CPU time per round of the coordinator process itself and of the four site
processes together (sampled every 20 ms from /proc while the rounds run).

    .venv/bin/python benchmarks/deploy_overhead.py                  # 30 rounds, fedavg, seed 0
    .venv/bin/python benchmarks/deploy_overhead.py --rounds 10 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from safetensors.numpy import load_file

from fedcare.algorithms.registry import build_strategy
from fedcare.cli.deploy import plan_from_study
from fedcare.data.registry import load_dataset
from fedcare.models.registry import build_model
from fedcare.net.store import RunStore
from fedcare.net.tls import init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.sim.engine import FederatedSimulation
from fedcare.study.config import load_config

SITES = ("cleveland", "hungarian", "switzerland", "va")
STUDY = """\
name: heart-deploy
dataset: {{name: heart-disease}}
model: {{name: logistic}}
seeds: [0]
rounds: {rounds}
local: {{optimizer: sgd, lr: 0.02, epochs: 1, batch_size: 16}}
baselines: []
strategies:
  - name: {strategy}
"""


def simulate(study: Path) -> tuple[float, np.ndarray]:
    plan = plan_from_study(load_config(study), None, None, None, None)
    dataset = load_dataset("heart-disease")
    sim = FederatedSimulation(
        module=build_model(plan.model, dataset.input_shape, dataset.num_classes),
        dataset=dataset,
        strategy=build_strategy(plan.strategy, plan.strategy_params),
        spec=plan.spec,
        rounds=plan.rounds,
        seed=plan.seed,
    )
    started = time.perf_counter()
    result = sim.run()
    return time.perf_counter() - started, result.final_params[0]


def site_command(cli: list[str], root: Path, run_id: str, site: str, port: str) -> list[str]:
    return [
        *cli, "site", "start", "--coordinator", f"127.0.0.1:{port}",
        "--bundle", str(root / site), "--data", f"heart-disease:{site}",
        "--state", str(root / "sites" / run_id / site), "--threads", "1",
    ]  # fmt: skip


class CpuSampler:
    """CPU seconds used so far by some processes, sampled with wall-clock stamps."""

    def __init__(self) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.procs[name] = psutil.Process(pid)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            now, used = time.time(), {}
            for name, proc in list(self.procs.items()):
                try:
                    t = proc.cpu_times()
                    used[name] = t.user + t.system
                except psutil.Error:  # it exited: keep its last figure
                    used[name] = self.samples[-1][1].get(name, 0.0) if self.samples else 0.0
            self.samples.append((now, used))

    def between(self, start: float, end: float, names: list[str]) -> float:
        """CPU seconds the named processes used from ``start`` to ``end`` (wall clock)."""

        def at(t: float) -> float:
            before = [u for when, u in self.samples if when <= t] or [self.samples[0][1]]
            return sum(before[-1].get(n, 0.0) for n in names)

        return at(end) - at(start)


PHASES = ("train", "aggregate", "evaluate", "next")


def phases(store: RunStore, run_id: str) -> dict[str, float]:
    """Median milliseconds per round of each phase, from the times the coordinator recorded
    its events: train (round_started -> the last update_accepted: the request, the sites'
    training and the uploads), aggregate (-> round_completed, its checkpoint written),
    evaluate (-> round_finished: the evaluation round trip and the second checkpoint),
    next (-> the next round_started)."""
    rounds: list[dict[str, float]] = []
    mark = {"round_started": "start", "update_accepted": "train", "round_completed": "aggregate"}
    mark["round_finished"] = "evaluate"
    for ev in store.events(run_id):
        if ev.kind == "round_started":
            if rounds:
                rounds[-1]["next"] = ev.time
            rounds.append({})
        if ev.kind in mark and rounds:
            rounds[-1][mark[ev.kind]] = ev.time
    spans: dict[str, list[float]] = {name: [] for name in PHASES}
    for r in rounds:
        times = [r.get(name) for name in ("start", *PHASES)]
        for name, begin, end in zip(PHASES, times, times[1:], strict=False):
            if begin is not None and end is not None:
                spans[name].append(1000 * (end - begin))
    return {name: statistics.median(v) for name, v in spans.items() if v}


@dataclass(frozen=True)
class Deployed:
    rounds_s: float  # first round started -> last round finished (run store)
    total_s: float  # including process start-up and connecting
    model: np.ndarray
    coordinator_cpu_s: float  # during the rounds
    sites_cpu_s: float
    phases_ms: dict[str, float]


def deploy(root: Path, study: Path, run_id: str, source: str | None) -> Deployed:
    """One deployed run; ``source``: the ``src`` folder its processes import fedcare from
    (None: the one this script imports)."""
    plan = plan_from_study(load_config(study), None, None, None, None)
    for site in SITES:
        ApprovalStore(root / "sites" / run_id / site / "approvals.json").approve(plan.hash, "bench")
    out = root / "out"
    port_file = root / f"{run_id}.port"
    cli = [sys.executable, "-m", "fedcare.cli.main"]
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source
    started = time.perf_counter()
    logs = open(root / f"{run_id}.log", "wb")  # noqa: SIM115 - closed below
    coordinator = subprocess.Popen(
        [
            *cli, "coordinator", "start", "--study", str(study), "--out", str(out),
            "--bundle", str(root / "coordinator"), "--ca", str(root / "ca"),
            "--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-id", run_id,
            "--start-grace", "600",
        ],
        stdout=logs, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    while not port_file.exists() or not port_file.read_text():
        if coordinator.poll() is not None:
            raise SystemExit((root / f"{run_id}.log").read_text())
        time.sleep(0.05)
    port = port_file.read_text()
    sites = [
        subprocess.Popen(
            site_command(cli, root, run_id, site, port), stdout=logs, stderr=logs, env=env
        )
        for site in SITES
    ]
    cpu = CpuSampler()
    cpu.watch("coordinator", coordinator.pid)
    for site, proc in zip(SITES, sites, strict=True):
        cpu.watch(site, proc.pid)
    cpu.thread.start()
    if coordinator.wait() != 0:
        raise SystemExit((root / f"{run_id}.log").read_text())
    total = time.perf_counter() - started
    for proc in sites:
        proc.wait()
    cpu.stop.set()
    cpu.thread.join()
    logs.close()
    with RunStore.in_folder(out) as store:
        rounds = store.rounds(run_id)
        first, last = min(r.started_at for r in rounds), max(r.finished_at or 0.0 for r in rounds)
        spans = phases(store, run_id)
    model = load_file(str(out / "deploy" / run_id / "model.safetensors"))["params"]
    return Deployed(
        last - first,
        total,
        model,
        cpu.between(first, last, ["coordinator"]),
        cpu.between(first, last, list(SITES)),
        spans,
    )


def source_arg(text: str) -> tuple[str, str | None]:
    """``NAME=PATH`` (a fedcare ``src`` folder) or ``NAME`` (this script's fedcare)."""
    name, _, path = text.partition("=")
    if path and not (Path(path) / "fedcare" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(f"--source {text}: {path} holds no fedcare package")
    return name, str(Path(path).resolve()) if path else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--source",
        type=source_arg,
        action="append",
        help="NAME=SRC_FOLDER: deploy from that source too, side by side in each repeat "
        "(e.g. --source before=/work/main/src --source after=src); default: this fedcare",
    )
    args = parser.parse_args()
    sources: list[tuple[str, str | None]] = args.source or [("deployed", None)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = init_study_ca(root / "ca", "heart-deploy")
        issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
        for site in SITES:
            issue_bundle(ca, site, root / site, "site")
        study = root / "study.yaml"
        study.write_text(STUDY.format(rounds=args.rounds, strategy=args.strategy))
        sim_times: list[float] = []
        runs: dict[str, list[Deployed]] = {name: [] for name, _ in sources}
        diffs: dict[str, list[float]] = {name: [] for name, _ in sources}
        for i in range(args.repeats):
            sim_wall, sim_model = simulate(study)
            sim_times.append(sim_wall)
            line = f"repeat {i + 1}: simulator {sim_wall:.2f} s"
            for name, source in sources:
                run = deploy(root, study, f"run{i}-{name}", source)
                runs[name].append(run)
                diffs[name].append(float(np.abs(sim_model - run.model).max()))
                line += (
                    f"; {name}: rounds {run.rounds_s:.2f} s (with start-up {run.total_s:.2f} s), "
                    f"max |diff| {diffs[name][-1]:.2e}, CPU per round: coordinator "
                    f"{1000 * run.coordinator_cpu_s / args.rounds:.1f} ms, 4 sites "
                    f"{1000 * run.sites_cpu_s / args.rounds:.1f} ms"
                )
            print(line, f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        sim = statistics.median(sim_times)
        print(
            f"heart study, {args.strategy}, {args.rounds} rounds, 4 site processes, mTLS "
            f"loopback; simulator {sim:.2f} s (median of {args.repeats}); load average now "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        for name, _ in sources:
            done = runs[name]
            dep = statistics.median(r.rounds_s for r in done)
            per = {k: statistics.median(r.phases_ms[k] for r in done) for k in PHASES}
            print(
                f"  {name}: deployed {dep:.2f} s -> {dep / sim:.2f}x the simulator (start-up "
                f"included: {statistics.median(r.total_s for r in done):.2f} s); final model "
                f"max |deployed - simulated| = {max(diffs[name]):.2e}; per round: "
                f"{1000 * dep / args.rounds:.1f} ms wall, coordinator CPU "
                f"{statistics.median(1000 * r.coordinator_cpu_s / args.rounds for r in done):.1f} ms, "
                f"sites' CPU {statistics.median(1000 * r.sites_cpu_s / args.rounds for r in done):.1f} ms; "
                "phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
            )
        if len(sources) > 1:
            base = statistics.median(r.rounds_s for r in runs[sources[0][0]])
            for name, _ in sources[1:]:
                mine = statistics.median(r.rounds_s for r in runs[name])
                print(f"  {name} / {sources[0][0]} deployed wall: {mine / base:.2f}")


if __name__ == "__main__":
    main()
