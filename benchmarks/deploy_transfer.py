"""Model transfer over the deployed transport: coordinator + site processes on loopback.

Each round the coordinator streams the model (a float32 vector) to every site and each site
streams an update of the same size back (the model it received). The coordinator takes each
update chunk by chunk as it arrives (a ``ChunkSink`` from ``begin``) and adds every chunk into
one running sum, or, with ``--envelope``, reassembles whole updates and adds them with
``StreamingMean.add`` (the path the protocol machines use). After the timed rounds the sum is
checked against sites x model.

Printed, side by side in one run, as medians over rounds (the first round is a warm-up when
there are more than one):
- per-site round trip (coordinator starts sending the model -> has the site's whole update)
  and the effective throughput per round trip per site = (model down + update up) / round trip;
- the same bytes as ONE plain gRPC unary message each way (same mTLS, one client), as a reference;
- our stream with mutual TLS and with ``--insecure`` plain text (loopback), 1 site and N sites;
- coordinator peak RSS with ``--mem-sites`` sites above its RSS before the model existed, as a
  multiple of the model size, with a float64 and a float32 running sum; each site's peak RSS;
- the same for the real deployed coordinator (``CoordinatorDriver`` + ``CoordinatorMachine``,
  run store, signed audit log, a checkpoint after every round) running FedAvg rounds with
  ``--mem-sites`` protocol sites that answer each train request with an update of the model's
  size: updates stream into scratch files and the mean is folded at the round's end;
  ``--phases`` adds its peak around each phase of a round (fold, server step, checkpoint,
  the released model), which is where a cut must be looked for.

    .venv/bin/python benchmarks/deploy_transfer.py                  # 100 MB, 4 sites, 10 for memory
    .venv/bin/python benchmarks/deploy_transfer.py --model-mb 20 --rounds 2   # quick look
    .venv/bin/python benchmarks/deploy_transfer.py --model-mb 2000 --sites 2 --rounds 1 --only big
    .venv/bin/python benchmarks/deploy_transfer.py --only chunks --chunk-sweep 1,4,8,16
    .venv/bin/python benchmarks/deploy_transfer.py --only machine --machine-rounds 3 --phases
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing as mp
import resource
import statistics
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import psutil

from fedcare.algorithms.aggregate import StreamingMean
from fedcare.net.channel import CoordinatorServer, Link, TransportLimits, open_session
from fedcare.net.serde import DEFAULT_CHUNK_BYTES, EncodedEnvelope, VectorHead
from fedcare.net.tls import TlsBundle, check_peer_certificate, init_study_ca, issue_bundle
from fedcare.runtime.envelope import Envelope

RUN = "bench"
UNARY = "/fedcare.bench.Reference/Echo"


@dataclass(frozen=True)
class Config:
    pki: Path
    model_bytes: int
    sites: int
    rounds: int
    chunk_bytes: int
    insecure: bool = False
    envelope: bool = False  # reassemble whole updates instead of summing chunks as they land
    sum_dtype: str = "float64"
    encode_once: bool = True  # one EncodedEnvelope for every site, not one per link
    lookahead_bytes: int | None = None  # gRPC read-ahead per stream (None: one chunk)
    inflight_models: float = 1.0  # whole updates reassembled at once (envelope path)
    phases: bool = False  # the deployed coordinator's peak per phase of its rounds


class RunningSum:
    """sum += weight * update, one block at a time, from any number of reader threads.

    Blocks of different sites that cover the same elements are serialised by striped locks
    (numpy releases the GIL while adding); blocks of different stripes add in parallel.
    """

    def __init__(self, size: int, dtype: str, stripe: int = 1 << 20) -> None:
        self.values: npt.NDArray[Any] = np.zeros(size, dtype=dtype)
        self.stripe = stripe
        self.locks = [threading.Lock() for _ in range(-(-size // stripe) or 1)]

    def add_block(self, index: int, block: npt.NDArray[Any], weight: float = 1.0) -> None:
        if index < 0 or index + block.size > self.values.size:
            raise ValueError(
                f"block of {block.size} at {index} does not fit a sum of {self.values.size}"
            )
        first, last = index // self.stripe, (index + block.size - 1) // self.stripe
        for s in range(first, last + 1):
            lo, hi = max(index, s * self.stripe), min(index + block.size, (s + 1) * self.stripe)
            part = block[lo - index : hi - index]
            with self.locks[s]:
                target = self.values[lo:hi]
                np.add(target, part if weight == 1.0 else weight * part, out=target)


@dataclass
class SumSink:
    """One site's update, added into the running sum chunk by chunk."""

    collector: Collector
    site: str
    total: RunningSum

    def write(self, index: int, values: npt.NDArray[Any]) -> None:
        self.total.add_block(index, values)

    def close(self) -> None:
        self.collector.finished(self.site)

    def abort(self, reason: str) -> None:
        self.collector.failed(self.site, reason)


@dataclass
class Collector:
    """Coordinator side of the benchmark: time each site's round trip, aggregate as updates land."""

    cfg: Config
    links: dict[str, Link] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    rtt: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    total: RunningSum | None = None
    mean: StreamingMean | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)
    adding: threading.Lock = field(
        default_factory=threading.Lock
    )  # StreamingMean is not thread-safe

    def connected(self, link: Link) -> None:
        with self.cond:
            self.links[link.identity] = link
            self.cond.notify_all()

    def begin(self, link: Link, head: VectorHead) -> SumSink | None:
        if self.cfg.envelope or self.total is None:
            return None
        return SumSink(self, head.envelope.sender, self.total)

    def received(self, link: Link, env: Envelope) -> None:
        if self.mean is None or env.vector is None:
            raise RuntimeError(f"unexpected message '{env.kind}' from {env.sender}")
        with self.adding:
            self.mean.add(env.vector, 1.0)
        self.finished(env.sender)

    def finished(self, site: str) -> None:
        with self.cond:
            self.rtt[site] = time.perf_counter() - self.sent_at[site]
            self.cond.notify_all()

    def failed(self, site: str, reason: str) -> None:
        with self.cond:
            self.errors.append(f"{site}: {reason}")
            self.cond.notify_all()

    def disconnected(self, link: Link, reason: str) -> None:
        pass


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not carry over
    the parent's peak through fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS (Linux clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def sum_error(total: npt.NDArray[Any], params: npt.NDArray[np.float32], sites: int) -> float:
    """max |total - sites * params|, block by block (no model-sized temporaries)."""
    worst, step = 0.0, 1 << 20
    for start in range(0, params.size, step):
        expected = sites * params[start : start + step].astype(total.dtype)
        worst = max(worst, float(np.max(np.abs(total[start : start + step] - expected))))
    return worst


def _limits(cfg: Config) -> TransportLimits:
    return TransportLimits(
        chunk_bytes=cfg.chunk_bytes,
        max_vector_bytes=2 * cfg.model_bytes,
        inflight_bytes=max(1, int(cfg.inflight_models * cfg.model_bytes)),
        lookahead_bytes=cfg.lookahead_bytes,
    )


def coordinator_main(cfg: Config, conn: Any) -> None:
    bundle = TlsBundle.load(cfg.pki / "coordinator")

    def peer_check(pem: bytes) -> str:
        return check_peer_certificate(pem, bundle.ca_pem, set(), role="site")

    collector = Collector(cfg)
    server = CoordinatorServer(
        "127.0.0.1:0",
        collector,
        tls=None if cfg.insecure else bundle,
        peer_check=None if cfg.insecure else peer_check,
        limits=_limits(cfg),
        insecure=cfg.insecure,
    )
    conn.send(server.start())
    with collector.cond:
        collector.cond.wait_for(lambda: len(collector.links) == cfg.sites, timeout=120)
    baseline = psutil.Process().memory_info().rss
    reset_peak_rss()
    n = cfg.model_bytes // 4
    params = np.random.default_rng(0).normal(size=n).astype(np.float32)
    rounds: list[dict[str, float]] = []
    walls, cpus, max_error = [], [], 0.0
    for r in range(cfg.rounds):
        cpu = time.process_time()
        if cfg.envelope:
            collector.mean = StreamingMean(n)
        else:
            collector.total = RunningSum(n, cfg.sum_dtype)
        collector.rtt = {}
        started = time.perf_counter()
        shared = EncodedEnvelope(Envelope.create("train", RUN, r, vector=params), cfg.chunk_bytes)
        for name, link in collector.links.items():
            collector.sent_at[name] = time.perf_counter()
            own = Envelope.create("train", RUN, r, vector=params)
            link.send(shared if cfg.encode_once else own)
        with collector.cond:
            collector.cond.wait_for(
                lambda: len(collector.rtt) + len(collector.errors) >= cfg.sites, timeout=1800
            )
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        if collector.errors or len(collector.rtt) < cfg.sites:
            raise RuntimeError(f"round {r} failed: {collector.errors}")
        rounds.append(dict(collector.rtt))
        total = collector.total.values if collector.total else collector.mean._sum  # type: ignore[union-attr]
        max_error = max(max_error, sum_error(total, params, cfg.sites))
        collector.total = collector.mean = None  # the round's aggregate is consumed
        total = None
    for link in collector.links.values():
        link.send(Envelope.create("stop", RUN, cfg.rounds))
        link.close()
    conn.send(
        {
            "rounds": rounds,
            "walls": walls,
            "cpus": cpus,
            "baseline": baseline,
            "peak": peak_rss(),
            "error": max_error,
        }
    )
    conn.recv()  # wait until the sites are gone
    server.stop(0)


def site_main(cfg: Config, name: str, port: int, results: Any) -> None:
    tls = None if cfg.insecure else TlsBundle.load(cfg.pki / name)
    target = f"{'localhost' if cfg.insecure else '127.0.0.1'}:{port}"
    session = open_session(target, tls=tls, identity_if_insecure=name, limits=_limits(cfg))
    baseline, cpu = psutil.Process().memory_info().rss, [time.process_time()]
    for env in session:
        cpu.append(time.process_time())
        if env.kind == "stop":
            break
        # The "update": the model it received, streamed back at the same size.
        session.send(Envelope.create("update", RUN, env.round, vector=env.vector))
        env = None  # type: ignore[assignment]
    session.close()
    # CPU per round, from one model's arrival to the next (the first round is a warm-up).
    per_round = [b - a for a, b in itertools.pairwise(cpu[1:])] or [cpu[-1] - cpu[0]]
    results.put((name, peak_rss() - baseline, statistics.median(per_round)))


def streaming(cfg: Config) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    results = ctx.Queue()
    coord = ctx.Process(target=coordinator_main, args=(cfg, child))
    coord.start()
    port = parent.recv()
    procs = [
        ctx.Process(target=site_main, args=(cfg, f"site{i}", port, results))
        for i in range(cfg.sites)
    ]
    for p in procs:
        p.start()
    result: dict[str, Any] = parent.recv()
    sites = [results.get(timeout=600) for _ in procs]
    result["site_peaks"] = [peak for _, peak, _ in sites]
    result["site_cpu"] = statistics.median(cpu for _, _, cpu in sites)
    for p in procs:
        p.join()
    parent.send("done")
    coord.join()
    return result


def unary_reference(cfg: Config, repeats: int) -> list[float]:
    """The same bytes as one gRPC unary message each way (echo), same mTLS, one client."""
    coord = TlsBundle.load(cfg.pki / "coordinator")
    site = TlsBundle.load(cfg.pki / "site0")
    limit = cfg.model_bytes + (1 << 20)
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("fedcare.bench.Reference", {"Echo": handler}),)
    )
    creds = grpc.ssl_server_credentials(
        [(coord.key_pem, coord.cert_pem)], root_certificates=coord.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    client_creds = grpc.ssl_channel_credentials(site.ca_pem, site.key_pem, site.cert_pem)
    payload = (
        np.random.default_rng(1).normal(size=cfg.model_bytes // 4).astype(np.float32).tobytes()
    )
    times = []
    with grpc.secure_channel(f"127.0.0.1:{port}", client_creds, options=options) as channel:
        echo = channel.unary_unary(UNARY)
        echo(b"warm-up")
        for _ in range(repeats):
            started = time.perf_counter()
            reply = echo(payload)
            times.append(time.perf_counter() - started)
            if len(reply) != len(payload):
                raise RuntimeError("echo lost bytes")
    server.stop(0)
    return times


def resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PhasePeaks:
    """VmHWM around each phase of the coordinator's round (the peak reset at each phase's
    start and end): the peak since the previous phase, the RSS at the phase's start, the
    peak inside it and the RSS after it. The overall peak is the largest of them."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, int, int]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def measured(*args: Any, **kwargs: Any) -> Any:
            between, before = peak_rss(), resident()
            reset_peak_rss()
            try:
                return original(*args, **kwargs)
            finally:
                self.rows.append((label, between, before, peak_rss(), resident()))
                reset_peak_rss()

        setattr(owner, name, measured)

    def install(self) -> None:
        import fedcare.net.coordinator_server as server
        import fedcare.runtime.coordinator as machine
        import fedcare.runtime.streamed_update as streamed

        self.wrap(streamed, "fold_mean", "fold the mean")
        self.wrap(machine, "server_step", "server step")
        self.wrap(server, "save_checkpoint", "checkpoint")
        self.wrap(server.CoordinatorDriver, "_finish", "release the model")

    def peak(self, last: int) -> int:
        return max([last] + [max(b, p) for _, b, _, p, _ in self.rows])


def initial_model(size: int, block: int = 1 << 18) -> npt.NDArray[np.float32]:
    """Standard normal float32 values of seed 0, drawn block by block (the same values as
    one whole float64 draw cast to float32, without its 2x temporary)."""
    rng = np.random.default_rng(0)
    params = np.empty(size, np.float32)
    for start in range(0, size, block):
        stop = min(size, start + block)
        params[start:stop] = rng.normal(size=stop - start)
    return params


def machine_coordinator_main(cfg: Config, conn: Any) -> None:
    """The deployed coordinator itself: driver, machine, store, audit log, checkpoints."""
    from fedcare.core.records import TrainSpec
    from fedcare.net.coordinator_server import Security, new_run, serve
    from fedcare.runtime.rounds import RunPlan

    sites = tuple(f"site{i}" for i in range(cfg.sites))
    size = cfg.model_bytes // 4
    plan = RunPlan(
        sites=sites,
        strategy="fedavg",
        spec=TrainSpec(optimizer="sgd", lr=0.1, epochs=1, batch_size=8),
        rounds=cfg.rounds,
        seed=0,
        input_shape=(size // 2 - 1,),  # logistic: 2 x (features + 1) parameters
        num_classes=2,
        study="bench",
        dataset="synthetic",
    )
    security = Security(TlsBundle.load(cfg.pki / "coordinator"))
    folder = cfg.pki / "study"
    phases = PhasePeaks()
    if cfg.phases:
        phases.install()
    baseline = psutil.Process().memory_info().rss
    reset_peak_rss()
    # The benchmark keeps no reference of its own to the model (only the coordinator's
    # count) and draws it block by block (a whole float64 draw alone peaked at 3x).
    driver = new_run(folder, RUN, plan, initial_model(size), security, log=lambda _: None)
    outcome = serve(driver, "127.0.0.1:0", limits=_limits(cfg), ready=conn.send, tick_s=0.5)
    peak = phases.peak(peak_rss())
    params = initial_model(size)
    # Each site k sends (k+1)/1000 everywhere with weight 10(k+1): the weighted mean is known.
    weights = np.arange(1, cfg.sites + 1, dtype=np.float64) * 10
    step = float(np.sum(weights * weights / 10 / 1000) / np.sum(weights))
    expected_error = 0.0
    for start in range(0, size, 1 << 20):
        want = params[start : start + (1 << 20)] + np.float32(cfg.rounds * step)
        got = outcome.final_params[start : start + (1 << 20)]
        expected_error = max(expected_error, float(np.max(np.abs(got - want))))
    conn.send(
        {
            "status": outcome.status,
            "failure": outcome.failure,
            "baseline": baseline,
            "peak": peak,
            "error": expected_error,
            "phases": phases.rows,
        }
    )
    conn.recv()


def machine_site_main(cfg: Config, name: str, port: int, results: Any) -> None:
    """A site that speaks the protocol without training: its update is a constant."""
    from fedcare.core.metrics import EvalStats
    from fedcare.runtime.messages import (
        ApprovalStatus,
        EvalResult,
        Hello,
        JobPlan,
        TrainRequest,
        UpdateMessage,
        parse_message,
    )

    index = int(name.removeprefix("site"))
    session = open_session(
        f"127.0.0.1:{port}", tls=TlsBundle.load(cfg.pki / name), limits=_limits(cfg)
    )
    baseline = psutil.Process().memory_info().rss
    session.send(Hello(True, {"num_train": 10 * (index + 1)}).to_envelope())
    delta = np.full(cfg.model_bytes // 4, (index + 1) / 1000, dtype=np.float32)
    for env in session:
        message = parse_message(env) if env.kind != "audit_entry" else None
        if isinstance(message, JobPlan):
            approval = ApprovalStatus(env.run_id, env.round, message.plan_hash, True)
            session.send(approval.to_envelope())
        elif isinstance(message, TrainRequest):
            update = UpdateMessage(
                env.run_id, env.round, message.attempt, delta, {}, 10.0 * (index + 1), 10,
                {"train_loss": 0.5},
            )  # fmt: skip
            session.send(update.to_envelope())
        elif env.kind == "eval_request":
            stats = {"global": EvalStats.empty(2)}
            session.send(EvalResult(env.run_id, env.round, stats).to_envelope())
        elif env.kind == "run_finished":
            break
        env = message = None  # type: ignore[assignment]
    session.close()
    results.put((name, peak_rss() - baseline, 0.0))


def report_machine_memory(label: str, cfg: Config) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    results = ctx.Queue()
    coord = ctx.Process(target=machine_coordinator_main, args=(cfg, child))
    coord.start()
    port = parent.recv()
    procs = [
        ctx.Process(target=machine_site_main, args=(cfg, f"site{i}", port, results))
        for i in range(cfg.sites)
    ]
    for p in procs:
        p.start()
    res: dict[str, Any] = parent.recv()
    site_peaks = [results.get(timeout=600)[1] for _ in procs]
    for p in procs:
        p.join()
    parent.send("done")
    coord.join()
    if res["status"] != "finished":
        raise RuntimeError(f"the deployed run did not finish: {res['failure']}")
    extra = res["peak"] - res["baseline"]
    print(
        f"{label:<34} coordinator peak RSS {res['peak'] / 1e6:.0f} MB, {extra / 1e6:.0f} MB above "
        f"its RSS before the model existed = {extra / cfg.model_bytes:.2f}x the model; "
        f"site peak RSS +{max(site_peaks) / cfg.model_bytes:.2f}x; "
        f"final model max error {res['error']:.1e}",
        flush=True,
    )
    if res["phases"]:
        print(
            "  phase (x the model above the RSS before it): peak since the previous phase, "
            "at its start, peak inside it, after it"
        )
    for label, between, before, inside, after in res["phases"]:
        figures = (x - res["baseline"] for x in (between, before, inside, after))
        print(f"  {label:<18}" + "".join(f"{x / cfg.model_bytes:8.2f}" for x in figures))


def make_pki(root: Path, sites: int) -> None:
    ca = init_study_ca(root / "ca", "bench")
    issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
    for i in range(sites):
        issue_bundle(ca, f"site{i}", root / f"site{i}", "site")


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _timed(res: dict[str, Any]) -> tuple[float, float, float]:
    """Median per-site round trip, round wall time and coordinator CPU, warm-up dropped."""
    kept = res["rounds"][1:] or res["rounds"]
    walls = res["walls"][1:] or res["walls"]
    cpus = res["cpus"][1:] or res["cpus"]
    rtt = statistics.median(t for rnd in kept for t in rnd.values())
    return rtt, statistics.median(walls), statistics.median(cpus)


def report_stream(label: str, cfg: Config, ref: float | None) -> float:
    res = streaming(cfg)
    rtt, wall, cpu = _timed(res)
    mb = cfg.model_bytes
    versus = f" = {ref / rtt:.2f}x the unary reference" if ref else ""
    print(
        f"{label:<34} per-site round trip {rtt:.3f} s -> {gbps(2 * mb, rtt):.2f} GB/s per site"
        f"{versus}; round {wall:.3f} s, all sites {gbps(2 * mb * cfg.sites, wall):.2f} GB/s; "
        f"CPU s per round: coordinator {cpu:.3f}, each site {res['site_cpu']:.3f}; "
        f"site peak RSS +{max(res['site_peaks']) / mb:.2f}x model; "
        f"sum max error {res['error']:.1e}",
        flush=True,
    )
    return rtt


def report_memory(label: str, cfg: Config) -> None:
    res = streaming(cfg)
    extra = res["peak"] - res["baseline"]
    print(
        f"{label:<34} coordinator peak RSS {res['peak'] / 1e6:.0f} MB, {extra / 1e6:.0f} MB above "
        f"its RSS before the model existed = {extra / cfg.model_bytes:.2f}x the model; "
        f"site peak RSS +{max(res['site_peaks']) / cfg.model_bytes:.2f}x; "
        f"sum max error {res['error']:.1e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=float, default=100.0)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--mem-sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--chunk-mib",
        type=float,
        default=DEFAULT_CHUNK_BYTES / (1 << 20),
        help="default: the transport's default chunk",
    )
    parser.add_argument(
        "--machine-rounds", type=int, default=3, help="rounds of the deployed coordinator run"
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="with --only machine: the coordinator's peak memory per phase of each round",
    )
    parser.add_argument("--chunk-sweep", default="1,4,8,16", help="MiB, for --only chunks")
    parser.add_argument("--lookahead-mib", type=float, default=None, help="default: one chunk")
    parser.add_argument(
        "--inflight-models",
        type=float,
        default=1.0,
        help="whole updates the coordinator reassembles at once, in model sizes (envelope path)",
    )
    parser.add_argument(
        "--only",
        choices=["all", "speed", "memory", "machine", "chunks", "big", "encode"],
        default="all",
        help="big: the model size given, --sites sites, mTLS, float64 sum, memory both ends",
    )
    args = parser.parse_args()
    model_bytes = int(args.model_mb * 1e6) // 4 * 4
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_pki(pki, max(args.sites, args.mem_sites))
        cfg = Config(
            pki,
            model_bytes,
            1,
            args.rounds,
            int(args.chunk_mib * (1 << 20)),
            lookahead_bytes=None
            if args.lookahead_mib is None
            else int(args.lookahead_mib * (1 << 20)),
            inflight_models=args.inflight_models,
            phases=args.phases,
        )
        print(
            f"model {model_bytes / 1e6:.0f} MB float32, chunks {args.chunk_mib:g} MiB, loopback, "
            f"{args.rounds} rounds, {psutil.cpu_count()} CPUs shared by every process",
            flush=True,
        )
        if args.only == "big":
            report_stream(
                f"mTLS, {args.sites} sites, float64 sum", replace(cfg, sites=args.sites), None
            )
            report_memory(
                f"memory, {args.sites} sites, float64 sum", replace(cfg, sites=args.sites, rounds=1)
            )
            return
        if args.only == "chunks":
            for mib in (float(x) for x in args.chunk_sweep.split(",")):
                c = replace(cfg, chunk_bytes=int(mib * (1 << 20)))
                report_stream(f"mTLS, 1 site, {mib:g} MiB chunks", c, None)
                report_stream(
                    f"mTLS, {args.sites} sites, {mib:g} MiB chunks",
                    replace(c, sites=args.sites),
                    None,
                )
            return
        if args.only == "encode":
            for once in (True, False):
                c = replace(cfg, sites=args.sites, encode_once=once)
                report_stream(
                    f"mTLS, {args.sites} sites, encode {'once' if once else 'per link'}", c, None
                )
            return
        if args.only in ("all", "speed"):
            ref = statistics.median(unary_reference(cfg, args.rounds))
            print(
                f"{'reference: 1 unary message each way':<34} round trip {ref:.3f} s -> "
                f"{gbps(2 * model_bytes, ref):.2f} GB/s (mTLS, 1 client)",
                flush=True,
            )
            for sites in sorted({1, args.sites}):
                for insecure in (False, True):
                    mode = "plain text" if insecure else "mTLS"
                    c = replace(cfg, sites=sites, insecure=insecure)
                    report_stream(f"stream, {mode}, {sites} site(s)", c, ref)
        if args.only in ("all", "memory", "machine"):
            report_machine_memory(
                f"{args.mem_sites} sites, deployed coordinator",
                replace(cfg, sites=args.mem_sites, rounds=args.machine_rounds),
            )
        if args.only in ("all", "memory"):
            mem = replace(cfg, sites=args.mem_sites, rounds=2)
            for label, c in (
                ("float64 sum, chunk by chunk", mem),
                ("float32 sum, chunk by chunk", replace(mem, sum_dtype="float32")),
                ("whole updates, StreamingMean", replace(mem, envelope=True)),
            ):
                report_memory(f"{args.mem_sites} sites, {label}", c)


if __name__ == "__main__":
    main()
