"""Fuzz every protocol decoder: mutated valid messages and random ones (issue 11, item 7).

Each case is a short stream of wire frames fed through the whole receiving path of
``fedcare.net.wire_fuzz.DecoderBench``: frame assembler, header JSON, typed messages,
SecAgg and CKKS messages, the plans and audit entries a site parses, and a real
coordinator machine in the phase that accepts the message. Counted per case:

- internal errors: any exception that is not a FedcareError (the typed refusal);
- allocations beyond the bound: tracemalloc's peak while the case is decoded, above
  ``--alloc-factor`` times what the receivers admit for one message: the largest valid
  message of the fuzzed plans (their vector limit) plus the header limit; the frames
  themselves are allocated before measuring;
- hangs: a case still running after ``--case-timeout`` seconds (SIGALRM in the worker;
  a worker stuck in C code shows up as a batch past its own deadline).

Case i of a run is drawn from ``random.Random(f"{seed}:{i}")`` alone, so any case a run
reports can be replayed with ``--replay KIND:I``.

    python benchmarks/fuzz_decoders.py                      # 100,000 + 100,000 cases
    python benchmarks/fuzz_decoders.py --mutated 2000 --random 2000   # a quick look
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import statistics
import sys
import time
import traceback
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import FrameType

from fedcare.core.errors import FedcareError
from fedcare.net.wire_fuzz import Case, DecoderBench, mutated_case, random_case

BATCH = 1000


class CaseTimeoutError(Exception):
    """Raised by SIGALRM inside a case that ran past its time limit."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise CaseTimeoutError


@dataclass
class Tally:
    cases: int = 0
    delivered: int = 0  # cases in which at least one message reached the parsers
    refused: int = 0
    internal: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    hangs: list[str] = field(default_factory=list)
    over_alloc: list[str] = field(default_factory=list)
    peak_max: int = 0
    seconds: list[float] = field(default_factory=list)
    limit: int = 0

    def merge(self, other: Tally) -> None:
        self.cases += other.cases
        self.delivered += other.delivered
        self.refused += other.refused
        self.internal.update(other.internal)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)
        self.hangs += other.hangs
        self.over_alloc += other.over_alloc
        self.peak_max = max(self.peak_max, other.peak_max)
        self.seconds += other.seconds
        self.limit = other.limit


_BENCH: DecoderBench | None = None


def _bench() -> DecoderBench:
    global _BENCH
    if _BENCH is None:
        _BENCH = DecoderBench(0)
        signal.signal(signal.SIGALRM, _alarm)
        tracemalloc.start()
    return _BENCH


def make_case(bench: DecoderBench, kind: str, seed: int, i: int) -> Case:
    rng = random.Random(f"{seed}:{kind}:{i}")
    return mutated_case(bench, rng) if kind == "mutated" else random_case(bench, rng)


def run_batch(
    kind: str, seed: int, start: int, stop: int, timeout_s: float, factor: float
) -> Tally:
    bench = _bench()
    tally = Tally(limit=bench.limit + bench.header_limit)
    allowed = int(factor * tally.limit)
    for i in range(start, stop):
        case = make_case(bench, kind, seed, i)
        bench.refill()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            if bench.decode(case.frames, case.receiver):
                tally.delivered += 1
        except FedcareError:
            tally.refused += 1
        except CaseTimeoutError:
            tally.hangs.append(f"{kind}:{i} ({case.mutation})")
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}"
            tally.internal[key] += 1
            tally.examples.setdefault(key, f"{kind}:{i} ({case.mutation}): {str(exc)[:160]}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        tally.seconds.append(time.perf_counter() - began)
        peak = tracemalloc.get_traced_memory()[1] - base
        tally.peak_max = max(tally.peak_max, peak)
        if peak > allowed:
            tally.over_alloc.append(f"{kind}:{i} ({case.mutation}): {peak} bytes")
        tally.cases += 1
    return tally


def fuzz(kind: str, count: int, args: argparse.Namespace) -> tuple[Tally, float]:
    total = Tally()
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(
                run_batch,
                kind,
                args.seed,
                s,
                min(s + BATCH, count),
                args.case_timeout,
                args.alloc_factor,
            )
            for s in range(0, count, BATCH)
        ]
        for future in futures:
            # A worker stuck in C code (SIGALRM cannot interrupt it) fails the run here.
            total.merge(future.result(timeout=BATCH * args.case_timeout + 600))
    return total, time.perf_counter() - began


def report(kind: str, tally: Tally, wall: float, workers: int) -> int:
    per_case = statistics.median(tally.seconds) * 1e3 if tally.seconds else 0.0
    internal = sum(tally.internal.values())
    print(f"\n{kind}: {tally.cases:,} cases in {wall:.1f} s on {workers} worker(s)")
    print(
        f"  throughput            {tally.cases / wall:,.0f} cases/s (median {per_case:.3f} ms per case, tracemalloc on)"
    )
    print(
        f"  delivered to parsers  {tally.delivered:,}; refused with a typed error {tally.refused:,}"
    )
    print(f"  internal errors       {internal}")
    for key, n in tally.internal.most_common():
        print(f"    {n} x {key}   e.g. {tally.examples[key]}")
    print(
        f"  allocation peak       max {tally.peak_max:,} bytes per case = "
        f"{tally.peak_max / tally.limit:.2f} x what one message may hold ({tally.limit:,} bytes)"
    )
    print(f"  over the bound        {len(tally.over_alloc)}")
    for line in tally.over_alloc[:10]:
        print(f"    {line}")
    print(f"  hangs                 {len(tally.hangs)}")
    for line in tally.hangs[:10]:
        print(f"    {line}")
    return internal + len(tally.over_alloc) + len(tally.hangs)


def replay(spec: str, seed: int) -> None:
    kind, _, index = spec.partition(":")
    bench = DecoderBench(0)
    case = make_case(bench, kind, seed, int(index))
    print(f"case {spec}: {case.mutation}, {len(case.frames)} frame(s) to the {case.receiver}")
    bench.decode(case.frames, case.receiver)  # let the traceback show
    print("decoded without an error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutated", type=int, default=100_000)
    parser.add_argument("--random", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=5.0)
    parser.add_argument("--alloc-factor", type=float, default=4.0)
    parser.add_argument(
        "--replay", help="decode one case, e.g. mutated:123, and show its traceback"
    )
    args = parser.parse_args()
    if args.replay:
        replay(args.replay, args.seed)
        return
    bench = DecoderBench(0)
    print(
        f"corpus: {len(bench.seeds)} valid messages of {len({s.envelope.kind for s in bench.seeds})} "
        f"kinds; vector limit {bench.limit:,} bytes, header limit {bench.header_limit:,}; CKKS {'on' if bench.he_keys else 'off'}; "
        f"case time limit {args.case_timeout} s; allocation bound {args.alloc_factor} x limit"
    )
    failures = 0
    for kind, count in (("mutated", args.mutated), ("random", args.random)):
        if count:
            tally, wall = fuzz(kind, count, args)
            failures += report(kind, tally, wall, args.workers)
    print(
        f"\n{'OK' if failures == 0 else 'FAILED'}: {failures} internal errors, allocations over the bound or hangs"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
