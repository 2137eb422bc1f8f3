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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


def deploy(root: Path, study: Path, run_id: str) -> tuple[float, float, np.ndarray, float, float]:
    """(rounds wall time, total wall time incl. start-up, final model, coordinator CPU
    seconds and the sites' CPU seconds during the rounds)."""
    plan = plan_from_study(load_config(study), None, None, None, None)
    for site in SITES:
        ApprovalStore(root / "sites" / run_id / site / "approvals.json").approve(plan.hash, "bench")
    out = root / "out"
    port_file = root / f"{run_id}.port"
    cli = [sys.executable, "-m", "fedcare.cli.main"]
    started = time.perf_counter()
    logs = open(root / f"{run_id}.log", "wb")  # noqa: SIM115 - closed below
    coordinator = subprocess.Popen(
        [
            *cli, "coordinator", "start", "--study", str(study), "--out", str(out),
            "--bundle", str(root / "coordinator"), "--ca", str(root / "ca"),
            "--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-id", run_id,
            "--start-grace", "600",
        ],
        stdout=logs, stderr=subprocess.STDOUT,
    )  # fmt: skip
    while not port_file.exists() or not port_file.read_text():
        if coordinator.poll() is not None:
            raise SystemExit((root / f"{run_id}.log").read_text())
        time.sleep(0.05)
    port = port_file.read_text()
    sites = [
        subprocess.Popen(site_command(cli, root, run_id, site, port), stdout=logs, stderr=logs)
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
    model = load_file(str(out / "deploy" / run_id / "model.safetensors"))["params"]
    coord_cpu = cpu.between(first, last, ["coordinator"])
    return last - first, total, model, coord_cpu, cpu.between(first, last, list(SITES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = init_study_ca(root / "ca", "heart-deploy")
        issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
        for site in SITES:
            issue_bundle(ca, site, root / site, "site")
        study = root / "study.yaml"
        study.write_text(STUDY.format(rounds=args.rounds, strategy=args.strategy))
        sim_times, dep_times, totals, diffs, coord_ms, site_ms = [], [], [], [], [], []
        for i in range(args.repeats):
            sim_wall, sim_model = simulate(study)
            dep_wall, total, dep_model, coord_cpu, site_cpu = deploy(root, study, f"run{i}")
            sim_times.append(sim_wall)
            dep_times.append(dep_wall)
            totals.append(total)
            diffs.append(float(np.abs(sim_model - dep_model).max()))
            coord_ms.append(1000 * coord_cpu / args.rounds)
            site_ms.append(1000 * site_cpu / args.rounds)
            print(
                f"repeat {i + 1}: simulator {sim_wall:.2f} s, deployed rounds {dep_wall:.2f} s "
                f"(with process start-up {total:.2f} s), max |diff| {diffs[-1]:.2e}; CPU per "
                f"round: coordinator {coord_ms[-1]:.1f} ms, 4 sites {site_ms[-1]:.1f} ms",
                flush=True,
            )
        sim, dep = statistics.median(sim_times), statistics.median(dep_times)
        print(
            f"heart study, {args.strategy}, {args.rounds} rounds, 4 site processes, mTLS loopback: "
            f"simulator {sim:.2f} s, deployed {dep:.2f} s -> {dep / sim:.2f}x the simulator "
            f"(start-up included: {statistics.median(totals):.2f} s); "
            f"final model max |deployed - simulated| = {max(diffs):.2e}; per round: deployed "
            f"{1000 * dep / args.rounds:.1f} ms wall, coordinator CPU "
            f"{statistics.median(coord_ms):.1f} ms, sites' CPU {statistics.median(site_ms):.1f} ms"
        )


if __name__ == "__main__":
    main()
