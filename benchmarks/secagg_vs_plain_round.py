"""One FedAvg round with and without secure aggregation: 100k parameters, 10% dropping.

Each site trains a ~100k-parameter MLP (256-256-128-2) for one epoch on its 200 synthetic
rows (batch 32, SGD) through fedcare's sequential trainer, one site at a time, as a site
agent would; 10% of the sites then drop after ShareKeys (they never send a masked input).
Three ways to sum the surviving updates, [w * delta, w] as the simulator feeds its secure
sum, side by side on the same trained updates:

* plain: fedcare's StreamingMean over the survivors' float32 updates;
* SecAgg+ (``secagg.simulate``, degree ``secagg_plus_degree(n)``, about 2 log2 n);
* classic SecAgg (the complete graph).

Two figures per configuration, medians of --repeats rounds:

* "sites in parallel": the critical path of a deployment where every site has its own
  machine: the slowest site's training + the slowest site per SecAgg stage + the server
  (plain: slowest training + the coordinator's sum). Transfers are not counted.
* "one process": everything one after another on this machine (every site's training +
  every site's SecAgg work + the server).

    python benchmarks/secagg_vs_plain_round.py [--sites 50 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _workload import make_workload
from fedcare.algorithms.aggregate import StreamingMean
from fedcare.core.records import LocalObjective, TrainSpec
from fedcare.core.seeds import SeedStream
from fedcare.ml.databank import DataBank
from fedcare.ml.schedule import batch_schedule
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model
from fedcare.secagg import FixedPointRing, SecAggConfig, Stage, secagg_plus_degree, simulate
from fedcare.sim.engine import initial_params

FEATURES, HIDDEN, ROWS = 256, [256, 128], 200
SPEC = TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=32)
VALUE_RANGE = 1.0  # public bound on every entry of [w * delta, w]


@dataclass
class Round:
    train: list[float]  # seconds per site
    plain_sum: float
    secure: dict[str, tuple[float, float]]  # kind -> (critical path, sequential) of SecAgg
    stages: dict[str, dict[str, tuple[float, float]]]  # kind -> stage -> (slowest site, server)


def train_sites(n: int, seed: int) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Each site's update after one local epoch, and its training time."""
    train, _ = make_workload(n, samples=ROWS, features=FEATURES, seed=seed)
    module = build_model("mlp", (FEATURES,), 2, hidden=HIDDEN)
    trainer = LocalTrainer(module, 2, mode="sequential")
    start_vec = initial_params(module, SeedStream(seed))
    bank = DataBank.from_arrays([x for x, _ in train], [y for _, y in train])
    seeds = SeedStream(seed)
    deltas, times = [], []
    warm = batch_schedule(ROWS, SPEC, seeds.generator("misc"))  # first call pays torch set-up
    trainer.train(bank, [0], start_vec[None, :], [warm], [LocalObjective()], SPEC)
    for k in range(n):
        schedule = batch_schedule(ROWS, SPEC, seeds.generator("batches", 0, k))
        began = time.perf_counter()
        result = trainer.train(bank, [k], start_vec[None, :], [schedule], [LocalObjective()], SPEC)
        times.append(time.perf_counter() - began)
        deltas.append((result.params[0] - start_vec).astype(np.float32))
    return deltas, times, [ROWS] * n


def secure_inputs(deltas: list[np.ndarray], counts: list[int]) -> dict[int, np.ndarray]:
    """[w * delta, w] with w normalised by the largest weight (the simulator's input)."""
    top = max(counts)
    out = {}
    for k, (d, c) in enumerate(zip(deltas, counts, strict=True)):
        w = np.float32(c / top)
        out[k] = np.concatenate([d * w, [w]]).astype(np.float32)
    return out


def secagg(n: int, inputs: dict[int, np.ndarray], dropped: set[int], degree: int | None):
    holders = n if degree is None else degree + 1
    length = next(iter(inputs.values())).size
    config = SecAggConfig(
        session_id=hashlib.sha256(f"round/{n}/{degree}".encode()).digest()[:16],
        client_ids=tuple(range(n)),
        vector_length=length,
        threshold=holders // 2 + 1,
        ring=FixedPointRing(clip=VALUE_RANGE, max_clients=n),
        degree=degree,
        min_survivors=n // 2 + 1,
    )
    return config, simulate(config, inputs, {Stage.MASKED_INPUT: dropped})


def one_round(n: int, seed: int, dropped: set[int]) -> Round:
    deltas, train_times, counts = train_sites(n, seed)
    survivors = [k for k in range(n) if k not in dropped]
    began = time.perf_counter()
    mean = StreamingMean(deltas[0].size)
    for k in survivors:
        mean.add(deltas[k], float(counts[k]))
    plain = mean.result().delta
    plain_sum = time.perf_counter() - began
    inputs = secure_inputs(deltas, counts)
    secure, stages = {}, {}
    for kind, degree in (("SecAgg+", secagg_plus_degree(n)), ("SecAgg", None)):
        config, outcome = secagg(n, inputs, dropped, degree)
        total = outcome.result.total
        if sorted(outcome.result.included) != survivors:
            raise RuntimeError(f"{kind}: the sum should include exactly the survivors")
        secure_mean = total[:-1] / total[-1]
        if not np.allclose(secure_mean, plain, atol=4 * n * config.ring.resolution):
            raise RuntimeError(f"{kind}: secure mean differs from the plain mean")
        secure[kind] = (outcome.critical_path, outcome.sequential)
        stages[kind] = {st.name: (t.clients_max, t.server) for st, t in outcome.timings.items()}
    return Round(train_times, plain_sum, secure, stages)


def report(n: int, rounds: list[Round], params: int) -> None:
    med = statistics.median
    print(
        f"\n{n} sites x {params:,} params (MLP {FEATURES}-{'-'.join(map(str, HIDDEN))}-2), "
        f"{ROWS} rows/site, 1 epoch; {n // 10} sites drop after ShareKeys; "
        f"medians of {len(rounds)} rounds"
    )
    slowest = med([max(r.train) for r in rounds])
    summed = med([sum(r.train) for r in rounds])
    print(
        f"  local training: slowest site {slowest:.3f}s, all sites in turn {summed:.3f}s; "
        f"plain sum at the coordinator {med([r.plain_sum for r in rounds]) * 1e3:.1f} ms"
    )
    plain_par = [max(r.train) + r.plain_sum for r in rounds]
    plain_seq = [sum(r.train) + r.plain_sum for r in rounds]
    print(f"  {'':<22}{'sites in parallel':>20}{'one process':>16}")
    print(f"  {'plain FedAvg round':<22}{med(plain_par):>19.3f}s{med(plain_seq):>15.3f}s")
    for kind in ("SecAgg+", "SecAgg"):
        par = [max(r.train) + r.secure[kind][0] for r in rounds]
        seq = [sum(r.train) + r.secure[kind][1] for r in rounds]
        print(f"  {kind + ' round':<22}{med(par):>19.3f}s{med(seq):>15.3f}s")
        ratio_par = med([s / p for s, p in zip(par, plain_par, strict=True)])
        ratio_seq = med([s / p for s, p in zip(seq, plain_seq, strict=True)])
        verdict = "met" if ratio_par <= 1.3 else "NOT met"
        print(
            f"  {kind + ' / plain':<22}{ratio_par:>19.2f}x{ratio_seq:>15.2f}x"
            f"   (target <= 1.3x, sites in parallel: {verdict})"
        )
    for kind in ("SecAgg+", "SecAgg"):
        parts = ", ".join(
            f"{stage} {med([r.stages[kind][stage][0] for r in rounds]) * 1e3:.0f}"
            f"+{med([r.stages[kind][stage][1] for r in rounds]) * 1e3:.0f}"
            for stage in rounds[0].stages[kind]
        )
        print(f"  {kind} critical path by stage, ms (slowest site + server): {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one site's CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = build_model("mlp", (FEATURES,), 2, hidden=HIDDEN)
    size = sum(p.numel() for p in params.parameters())
    print(f"torch {torch.__version__}, {args.threads} thread(s); {size:,} parameters")
    for n in args.sites:
        dropped = set(random.Random(n).sample(range(n), n // 10))
        rounds = [one_round(n, seed, dropped) for seed in range(args.repeats)]
        report(n, rounds, size)


if __name__ == "__main__":
    main()
