"""Private set intersection at scale (issue 14): two parties as separate processes on loopback.

Each party is its own OS process (multiprocessing, spawn) running its ``PsiParty`` machine;
they talk over a TCP socket on 127.0.0.1 (``multiprocessing.connection``, length-prefixed
frames of the PSI's own byte encoding, no pickle). A reader thread per party drains the
socket into an inbox so neither side can block the other's sends. Identifiers come from
``SyntheticIdentifiers`` (streamed, chosen overlap); keyed hashing is timed apart from the
protocol. Printed: wall time of the protocol (first message to both results), each party's
CPU time and peak RSS, bytes on the wire, per-operation costs measured in the same run, the
load average before and after (the machine is shared), and a correctness check against the
known overlap. ``--three`` adds an in-process three-party run checked against a plain set
intersection.

    python benchmarks/psi.py --size 1000000                   # the 1M x 1M target
    python benchmarks/psi.py --size 10000000 --mode cardinality  # memory of a 10M run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing as mp
import os
import queue
import resource
import statistics
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import numpy as np
import psutil

from fedcare.data.vertical import SyntheticIdentifiers
from fedcare.linkage import (
    IdentifierRules,
    PsiConfig,
    PsiParty,
    PsiState,
    decode,
    encode,
    keyed_identifiers,
    matching,
    psi_results,
)
from fedcare.linkage.group import blind, new_key

SECRET = b"benchmark study secret (32 B)..."
RULES = IdentifierRules()
NAMES = ("clinic", "laboratory")


def _reader(conn: Connection, inbox: queue.Queue[bytes | None]) -> None:
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)


def _connect(port: int, patience_s: float = 600.0) -> Connection:
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return Client(("127.0.0.1", port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _party(index: int, args: dict[str, Any], port: int, results: Any, progress: Any) -> None:
    name = NAMES[index]
    ids = SyntheticIdentifiers([args["size"]] * 2, shared=args["shared"], seed=args["seed"])
    # The label party listens before hashing, the other retries: no start-up race.
    listener = Listener(("127.0.0.1", port)) if index == 0 else None
    t0 = time.perf_counter()
    keyed = keyed_identifiers(ids.batches(index, args["batch"]), RULES, SECRET, party=name)
    hash_s = time.perf_counter() - t0
    if listener is not None:
        conn = listener.accept()
        listener.close()
    else:
        conn = _connect(port)
    progress[0] = 1  # phase: keyed, in the protocol
    conn.send_bytes(b"ready")  # both keyed: start the clock together
    conn.recv_bytes()
    config = PsiConfig(NAMES, mode=args["mode"], batch_size=args["batch"])
    machine = PsiParty(config, name, keyed)
    del keyed  # the machine drops its keyed hashes once its own set is sent
    inbox: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_reader, args=(conn, inbox), daemon=True).start()
    sent = 0
    cpu0, start = time.process_time(), time.perf_counter()
    outgoing = machine.start()
    own_done = False
    while machine.state is not PsiState.FINISHED or not own_done:
        data: bytes | None = None
        if not own_done:
            message = next(outgoing, None)
            if message is None:
                own_done = True
            else:
                frame = encode(message)
                conn.send_bytes(frame)
                sent += len(frame)
                progress[1] = sent
            try:
                data = inbox.get_nowait()
            except queue.Empty:
                continue
        else:
            data = inbox.get()
        if data is None:
            raise RuntimeError(f"{name}: peer closed before the PSI finished")
        for reply in machine.receive(decode(data)):
            frame = encode(reply)
            conn.send_bytes(frame)
            sent += len(frame)
            progress[1] = sent
    end = time.perf_counter()
    result = machine.result
    check = None
    if result.rows is not None:  # rows whose index is below `shared` are the shared patients
        check = bool(np.all(ids.indices(index, 0, args["size"])[result.rows] < args["shared"]))
    results.put(
        {
            "party": name,
            "start": start,
            "end": end,
            "cpu_s": time.process_time() - cpu0,
            "hash_s": hash_s,
            "size": result.size,
            "rows_ok": check,
            "sent_bytes": sent,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
    conn.close()


def two_processes(args: dict[str, Any], port: int, limit_s: float) -> dict[str, Any]:
    """Run both parties; sample their RSS every 0.5 s; stop them after ``limit_s``."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    progress = [ctx.Array("q", 2) for _ in (0, 1)]  # phase, bytes sent
    procs = [ctx.Process(target=_party, args=(i, args, port, results, progress[i])) for i in (0, 1)]
    for p in procs:
        p.start()
    watched = [psutil.Process(p.pid) for p in procs]
    peak = [0, 0]
    out: dict[str, Any] = {}
    began = time.monotonic()
    while len(out) < 2:
        for i, proc in enumerate(watched):
            with contextlib.suppress(psutil.Error):
                peak[i] = max(peak[i], proc.memory_info().rss)
        try:
            r = results.get(timeout=0.5)
            out[r["party"]] = r
        except queue.Empty:
            pass
        if time.monotonic() - began > limit_s:
            for p in procs:
                p.terminate()
            return {
                "stopped_after_s": time.monotonic() - began,
                "phases": [a[0] for a in progress],
                "sent_mib": [a[1] / 2**20 for a in progress],
                "sampled_peak_rss_mb": [x / 2**20 for x in peak],
            }
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a party process failed with exit code {p.exitcode}")
    wall = max(r["end"] for r in out.values()) - min(r["start"] for r in out.values())
    return {"wall_s": wall, "sampled_peak_rss_mb": [x / 2**20 for x in peak], **out}


def per_op_costs(n: int = 20_000) -> dict[str, float]:
    """CPU microseconds per element of each step, measured here, now (median of 3)."""
    ids = [f"P{i:013d}" for i in range(n)]
    elements = b"".join(hashlib.sha256(i.encode()).digest() for i in ids)
    key = new_key()
    keys = matching.keys_from_elements(elements)

    def cpu(fn: Any) -> float:
        runs = []
        for _ in range(3):
            t = time.process_time()
            fn()
            runs.append((time.process_time() - t) / n * 1e6)
        return statistics.median(runs)

    return {
        "normalise+HMAC-SHA256 (us)": cpu(
            lambda: keyed_identifiers([ids], RULES, SECRET, party="p")
        ),
        "X25519 blind incl. Python (us)": cpu(lambda: blind(elements, key, sender="p")),
        "match, 128-bit keys (us)": cpu(lambda: matching.isin(keys, keys)),
    }


def three_parties(size: int, seed: int) -> bool:
    ids = SyntheticIdentifiers([size, size, size], shared=size // 2, seed=seed)
    sets = [[i for b in ids.batches(p) for i in b] for p in range(3)]
    # Pairwise-only patients too: the third party also holds half of the first's own ones.
    shared = ids.shared_identifiers()
    sets[2] = sets[2][: size // 2] + [i for i in sets[0] if i not in shared][: size // 4]
    names = ("clinic", "laboratory", "cardiology")
    inputs = {
        n: keyed_identifiers([s], RULES, SECRET, party=n) for n, s in zip(names, sets, strict=True)
    }
    expected = set(sets[0]) & set(sets[1]) & set(sets[2])
    results = psi_results(PsiConfig(names, mode="all", batch_size=4096), inputs)
    linked = [[s[r] for r in results[n].rows] for n, s in zip(names, sets, strict=True)]  # type: ignore[union-attr]
    return linked[0] == linked[1] == linked[2] and set(linked[0]) == expected


def against_openmined(size: int, seed: int) -> None:
    """Ours and openmined-psi (P-256, the library NVFLARE uses), one process, same sets.

    openmined-psi pins protobuf < 7 (the grpc extra needs >= 7), so it lives in its own
    virtualenv; run this script from there (see benchmarks/README.md).
    """
    import private_set_intersection.python as openmined

    ids = SyntheticIdentifiers([size, size], shared=size // 2, seed=seed)
    sets = [[i for b in ids.batches(p) for i in b] for p in (0, 1)]
    timings: dict[str, list[float]] = {"fedcare": [], "openmined-psi": []}
    for _ in range(3):
        t = time.process_time()
        inputs = {
            n: keyed_identifiers([s], RULES, SECRET, party=n)
            for n, s in zip(NAMES, sets, strict=True)
        }
        ours = psi_results(PsiConfig(NAMES, mode="label", batch_size=4096), inputs)["clinic"].size
        timings["fedcare"].append(time.process_time() - t)
        t = time.process_time()
        client = openmined.client.CreateWithNewKey(True)
        server = openmined.server.CreateWithNewKey(True)
        setup = server.CreateSetupMessage(1e-9, size, sets[1], openmined.DataStructure.RAW)
        response = server.ProcessRequest(client.CreateRequest(sets[0]))
        theirs = len(client.GetIntersection(setup, response))
        timings["openmined-psi"].append(time.process_time() - t)
        assert ours == theirs == size // 2, (ours, theirs)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    for name, value in medians.items():
        print(f"  {name:14s} {size:,} x {size:,}: median CPU {value:6.2f} s over 3 runs")
    print(f"  openmined-psi / fedcare CPU: {medians['openmined-psi'] / medians['fedcare']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="identifiers per party")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--mode", default="label", choices=["label", "all", "cardinality"])
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--port", type=int, default=47_611)
    parser.add_argument("--three", type=int, default=0, help="also run 3 parties of this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--openmined", type=int, default=0, help="only compare with openmined-psi at this size"
    )
    parser.add_argument(
        "--limit", type=float, default=3600.0, help="stop a run after this many seconds"
    )
    cli = parser.parse_args()
    args = {
        "size": cli.size,
        "shared": round(cli.overlap * cli.size),
        "mode": cli.mode,
        "batch": cli.batch,
        "seed": cli.seed,
    }
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()}")
    if cli.openmined:
        against_openmined(cli.openmined, cli.seed)
        print(f"load average after {os.getloadavg()}")
        return
    costs = per_op_costs()
    for what, us in costs.items():
        print(f"  {what:34s} {us:8.2f}")
    ops = 2 * cli.size  # each party blinds its own set and the other's once
    ideal = ops * costs["X25519 blind incl. Python (us)"] / 1e6
    print(
        f"curve work per party: {ops:,} scalar multiplications = {ideal:.1f} s of CPU at that cost"
    )
    walls = []
    for repeat in range(cli.repeats):
        run = two_processes(args, cli.port + repeat, cli.limit)
        if "stopped_after_s" in run:
            print(f"run {repeat + 1} stopped at --limit: {run}")
            continue
        walls.append(run["wall_s"])
        print(
            f"run {repeat + 1}: {cli.size:,} x {cli.size:,}, overlap {args['shared']:,}, mode {cli.mode}"
        )
        print(f"  protocol wall time {run['wall_s']:.1f} s (target <= 60 s)")
        for name in NAMES:
            r = run[name]
            print(
                f"  {name:10s} cpu {r['cpu_s']:7.1f} s  keyed-hash {r['hash_s']:6.1f} s  "
                f"sent {r['sent_bytes'] / 2**20:7.1f} MiB  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                f"size {r['size']}  rows correct {r['rows_ok']}"
            )
        expected = args["shared"]
        label_size = run["clinic"]["size"]
        print(
            f"  intersection {label_size:,} (expected {expected:,}): {'OK' if label_size == expected else 'WRONG'}"
        )
        cpu = [run[n]["cpu_s"] for n in NAMES]
        print(f"  cpu share: {sum(cpu) / (2 * run['wall_s']):.0%} of 2 cores (shared machine)")
        print(f"  with a core per party the protocol would take ~{max(cpu):.1f} s (max party CPU)")
    if walls:
        print(
            f"median protocol wall time over {len(walls)} run(s): {statistics.median(walls):.1f} s"
        )
    print(f"load average after {os.getloadavg()}")
    if cli.three:
        ok = three_parties(cli.three, cli.seed)
        print(f"three parties x {cli.three:,} (mode all) equal to a plain set intersection: {ok}")


if __name__ == "__main__":
    main()
