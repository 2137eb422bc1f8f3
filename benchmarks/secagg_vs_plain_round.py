"""One FedAvg round with and without secure aggregation: 100k parameters, 10% dropping.

Each site trains a ~100k-parameter MLP (256-256-128-2) for one epoch on its 200 synthetic
rows (batch 32, SGD) through fedcare's sequential trainer, one site at a time, as a site
agent would; 10% of the sites then drop after ShareKeys (they never send an update or a
masked input). The rounds compared, on the same trained updates:

* plain: every surviving site sends its float32 update; the coordinator averages them
  with fedcare's StreamingMean (weights n_k, float64 accumulation), as the simulator and
  the deployed coordinator do;
* SecAgg+ (``secagg.simulate``, degree ``secagg_plus_degree(n)``, about 2 log2 n) and
  classic SecAgg (the complete graph): every site turns its update into the simulator's
  secure-sum input ``[w * delta, w]`` (timed as site work), runs the four protocol stages,
  and the coordinator divides the unmasked sum by its last entry to get the same mean
  (timed as coordinator work). The secure mean is checked against the plain one.

What is the same on both sides: the training work (the very same updates and training
times), the dropouts, and the transport model, which is no transport: messages are
passed in memory and no network time is counted on either side. Not counted, and all in
the plain round's favour in a real network: the secure round's three extra round trips.
Python's garbage collector is paused while a round is timed on both sides (it would
otherwise stop whichever site happens to trigger a collection over all 50 sites' objects,
something a site running in its own process never sees).

Three figures per configuration, medians of --repeats rounds:

* "sites in parallel": the critical path of a deployment where every site has its own
  machine (one core, as the single torch thread here) and starts SecAgg once it has
  trained: the slowest site's training (plus its secure-input preparation) + for each
  SecAgg stage the slowest site + the server. The plain round: the slowest site's training
  + the coordinator's average. The coordinator expands masks on ``--workers`` threads
  (default: half the cores of this machine, so 1 on the 2-core benchmark machine).
* "keys while training": the same, but each site runs everything that does not need its
  update (keys, shares, expanding its mask; ``SecAggClient(..., vector=None)``) on a
  second core while it trains, and the coordinator its first two stages; after training
  only quantising + adding the ready mask, the sum and the unmasking are left. The
  critical path is max(slowest training, that input-free chain) + the rest. The plain
  round is the same as above (it has nothing to start early).
* "one process": everything one after another on this machine (every site's training +
  every site's SecAgg work + the server).

Times are wall-clock seconds; ``--clock cpu`` reads this process's CPU seconds instead
(with one server thread), which other jobs on a shared machine disturb less.

    python benchmarks/secagg_vs_plain_round.py [--sites 50 200] [--repeats 5] [--workers N]
        [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from fedcare.secagg.masks import default_workers
from fedcare.secagg.simulate import StageTiming
from fedcare.sim.engine import initial_params

FEATURES, HIDDEN, ROWS = 256, [256, 128], 200
SPEC = TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=32)
VALUE_RANGE = 1.0  # public bound on every entry of [w * delta, w]
KINDS = ("SecAgg+", "SecAgg")
Clock = Callable[[], float]


@dataclass
class Round:
    train: list[float]  # seconds per site
    plain_sum: float
    prepare: list[float]  # seconds per site to build its secure input
    secure: dict[str, tuple[float, float]]  # kind -> (critical path, sequential) of SecAgg
    overlap: dict[str, tuple[float, float]]  # kind -> (input-free chain, what follows training)
    stages: dict[str, dict[str, tuple[float, float]]]  # kind -> stage -> (slowest site, server)
    raw: dict[
        str, tuple[dict[Stage, StageTiming], dict[int, float], float]
    ]  # timings, online, mean


@contextmanager
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def train_sites(n: int, seed: int, clock: Clock) -> tuple[list[np.ndarray], list[float], list[int]]:
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
    with no_gc():
        for k in range(n):
            schedule = batch_schedule(ROWS, SPEC, seeds.generator("batches", 0, k))
            began = clock()
            result = trainer.train(
                bank, [k], start_vec[None, :], [schedule], [LocalObjective()], SPEC
            )
            times.append(clock() - began)
            deltas.append((result.params[0] - start_vec).astype(np.float32))
    return deltas, times, [ROWS] * n


def secure_input(delta: np.ndarray, count: int, top: int) -> np.ndarray:
    """[w * delta, w] with w = n_k / max n (public, at most 1): the simulator's input."""
    w = np.float32(count / top)
    return np.concatenate([delta * w, [w]]).astype(np.float32)


def secagg(
    n: int,
    inputs: dict[int, np.ndarray],
    dropped: set[int],
    degree: int | None,
    workers: int,
    clock: Clock,
):
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
    drops = {Stage.MASKED_INPUT: dropped}
    with no_gc():
        outcome = simulate(
            config, inputs, drops, server_workers=workers, late_inputs=True, clock=clock
        )
        began = clock()
        total = outcome.result.total
        mean = total[:-1] / total[-1]
        finish = clock() - began
    return config, outcome, mean, finish


def one_round(n: int, seed: int, dropped: set[int], workers: int, clock: Clock) -> Round:
    deltas, train_times, counts = train_sites(n, seed, clock)
    survivors = [k for k in range(n) if k not in dropped]
    with no_gc():
        began = clock()
        plain_mean = StreamingMean(deltas[0].size)
        for k in survivors:
            plain_mean.add(deltas[k], float(counts[k]))
        plain = plain_mean.result().delta
        plain_sum = clock() - began
        inputs, prepare = {}, []
        for k in range(n):
            began = clock()
            inputs[k] = secure_input(deltas[k], counts[k], max(counts))
            prepare.append(clock() - began)
    secure, stages, overlap, raw = {}, {}, {}, {}
    for kind, degree in (("SecAgg+", secagg_plus_degree(n)), ("SecAgg", None)):
        config, outcome, mean, finish = secagg(n, inputs, dropped, degree, workers, clock)
        if sorted(outcome.result.included) != survivors:
            raise RuntimeError(f"{kind}: the sum should include exactly the survivors")
        if not np.allclose(mean, plain, atol=4 * n * config.ring.resolution):
            raise RuntimeError(f"{kind}: secure mean differs from the plain mean")
        secure[kind] = (outcome.critical_path + finish, outcome.sequential + finish)
        overlap[kind] = (outcome.offline_path, outcome.online_path + finish)
        stages[kind] = {st.name: (t.clients_max, t.server) for st, t in outcome.timings.items()}
        raw[kind] = (outcome.timings, outcome.online, finish)
    return Round(train_times, plain_sum, prepare, secure, overlap, stages, raw)


def filtered(rounds: list[Round], kind: str) -> tuple[float, float, float]:
    """(plain, secure in parallel, secure with keys while training) from each site's and the
    server's fastest time over the rounds (same work each round), then the slowest site:
    preemption by other jobs on a shared machine inflates the per-stage maxima otherwise."""
    n = len(rounds[0].train)
    site = max(min(r.train[k] + r.prepare[k] for r in rounds) for k in range(n))
    plain = max(min(r.train[k] for r in rounds) for k in range(n)) + min(
        r.plain_sum for r in rounds
    )

    def slowest(stage: Stage) -> float:
        ids = rounds[0].raw[kind][0][stage].per_client
        return max(
            (min(r.raw[kind][0][stage].per_client[k] for r in rounds) for k in ids), default=0.0
        )

    server = {st: min(r.raw[kind][0][st].server for r in rounds) for st in Stage}
    online = max(min(r.raw[kind][1][k] for r in rounds) for k in rounds[0].raw[kind][1])
    finish = min(r.raw[kind][2] for r in rounds)
    staged = sum(slowest(st) + server[st] for st in Stage)
    first = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS)
    offline = sum(slowest(st) + server[st] for st in first) + slowest(Stage.MASKED_INPUT)
    after = online + server[Stage.MASKED_INPUT] + slowest(Stage.UNMASKING)
    after += server[Stage.UNMASKING] + finish
    return plain, site + staged + online + finish, max(site, offline) + after


def report(n: int, rounds: list[Round], params: int, workers: int) -> None:
    med = statistics.median
    print(
        f"\n{n} sites x {params:,} params (MLP {FEATURES}-{'-'.join(map(str, HIDDEN))}-2), "
        f"{ROWS} rows/site, 1 epoch; {n // 10} sites drop after ShareKeys; "
        f"medians of {len(rounds)} rounds; server mask threads: {workers}"
    )
    slowest = med([max(r.train) for r in rounds])
    summed = med([sum(r.train) for r in rounds])
    print(
        f"  local training: slowest site {slowest:.3f}s, all sites in turn {summed:.3f}s; "
        f"plain average at the coordinator {med([r.plain_sum for r in rounds]) * 1e3:.1f} ms; "
        f"secure input at a site {med([max(r.prepare) for r in rounds]) * 1e3:.2f} ms (slowest)"
    )
    plain_par = [max(r.train) + r.plain_sum for r in rounds]
    plain_seq = [sum(r.train) + r.plain_sum for r in rounds]
    print(f"  {'':<22}{'sites in parallel':>20}{'keys while training':>22}{'one process':>14}")
    print(
        f"  {'plain FedAvg round':<22}{med(plain_par):>19.3f}s{med(plain_par):>21.3f}s"
        f"{med(plain_seq):>13.3f}s"
    )
    for kind in KINDS:
        site = [max(t + p for t, p in zip(r.train, r.prepare, strict=True)) for r in rounds]
        par = [s + r.secure[kind][0] for s, r in zip(site, rounds, strict=True)]
        early = [
            max(s, r.overlap[kind][0]) + r.overlap[kind][1]
            for s, r in zip(site, rounds, strict=True)
        ]
        seq = [sum(r.train) + sum(r.prepare) + r.secure[kind][1] for r in rounds]
        print(f"  {kind + ' round':<22}{med(par):>19.3f}s{med(early):>21.3f}s{med(seq):>13.3f}s")
        ratios = [
            med([s / p for s, p in zip(secure, plain, strict=True)])
            for secure, plain in ((par, plain_par), (early, plain_par), (seq, plain_seq))
        ]
        verdict = ", ".join(
            f"{name} {'met' if r <= 1.3 else 'NOT met'}"
            for name, r in (("parallel", ratios[0]), ("keys while training", ratios[1]))
        )
        print(
            f"  {kind + ' / plain':<22}{ratios[0]:>19.2f}x{ratios[1]:>21.2f}x{ratios[2]:>13.2f}x"
            f"   (target <= 1.3x: {verdict})"
        )
        chain = med([r.overlap[kind][0] for r in rounds]) * 1e3
        after = med([r.overlap[kind][1] for r in rounds]) * 1e3
        print(
            f"  {'':<22}input-free chain {chain:.1f} ms (hidden if shorter than training), "
            f"after training {after:.1f} ms"
        )
        plain, par_f, early_f = filtered(rounds, kind)
        print(
            f"  {'':<22}fastest-of-{len(rounds)} per site and stage: plain {plain * 1e3:.1f} ms, "
            f"{kind} {par_f * 1e3:.1f} ms ({par_f / plain:.2f}x), keys while training "
            f"{early_f * 1e3:.1f} ms ({early_f / plain:.2f}x)"
        )
    for kind in KINDS:
        parts = ", ".join(
            f"{stage} {med([r.stages[kind][stage][0] for r in rounds]) * 1e3:.1f}"
            f"+{med([r.stages[kind][stage][1] for r in rounds]) * 1e3:.1f}"
            for stage in rounds[0].stages[kind]
        )
        print(f"  {kind} critical path by stage, ms (slowest site + server): {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one site's CPU)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server threads for masks (default: half the cores)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: CPU seconds of this process (less disturbed by other load; one server "
        "thread, since CPU time adds up the threads' work)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = build_model("mlp", (FEATURES,), 2, hidden=HIDDEN)
    size = sum(p.numel() for p in params.parameters())
    workers = args.workers if args.workers is not None else default_workers(size + 1)
    clock: Clock = time.perf_counter
    if args.clock == "cpu":
        clock, workers = time.process_time, 1
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {size:,} parameters; "
        f"{args.clock}-clock seconds; load average {os.getloadavg()[0]:.1f} at start"
    )
    for n in args.sites:
        dropped = set(random.Random(n).sample(range(n), n // 10))
        rounds = [one_round(n, seed, dropped, workers, clock) for seed in range(args.repeats)]
        report(n, rounds, size, workers)


if __name__ == "__main__":
    main()
