"""Model transfer over the deployed transport: coordinator + site processes, loopback, mTLS.

Each round the coordinator streams the model (a float32 vector) to every site and each site
streams an update of the same size back; the coordinator adds every update into the real
streaming accumulator (fedcare.algorithms.aggregate.StreamingMean) as it arrives.

Printed, as medians over rounds:
- per-site round trip (coordinator starts sending the model -> has the site's whole update)
  and the effective throughput per round trip per site = (model down + update up) / round trip;
- the same bytes as ONE plain gRPC unary message each way (same TLS, one client), as a reference;
- coordinator peak RSS with ``--mem-sites`` sites, above its RSS before the model existed,
  as a multiple of the model size.

    .venv/bin/python benchmarks/deploy_transfer.py                  # 100 MB, 4 sites, 10 for memory
    .venv/bin/python benchmarks/deploy_transfer.py --model-mb 20 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from fedcare.algorithms.aggregate import StreamingMean
from fedcare.net.channel import CoordinatorServer, Link, TransportLimits, open_session
from fedcare.net.tls import TlsBundle, check_peer_certificate, init_study_ca, issue_bundle
from fedcare.runtime.envelope import Envelope

RUN = "bench"
UNARY = "/fedcare.bench.Reference/Echo"


@dataclass
class Config:
    pki: Path
    model_bytes: int
    sites: int
    rounds: int
    chunk_bytes: int
    inflight_models: float


@dataclass
class Collector:
    """Coordinator side of the benchmark: time each site's round trip, aggregate as updates land."""

    expected: int
    links: dict[str, Link] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    rtt: dict[str, float] = field(default_factory=dict)
    accumulator: StreamingMean | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    def connected(self, link: Link) -> None:
        with self.cond:
            self.links[link.identity] = link
            self.cond.notify_all()

    def received(self, link: Link, env: Envelope) -> None:
        assert self.accumulator is not None and env.vector is not None
        self.accumulator.add(env.vector, 1.0)
        with self.cond:
            self.rtt[env.sender] = time.perf_counter() - self.sent_at[env.sender]
            self.cond.notify_all()

    def disconnected(self, link: Link, reason: str) -> None:
        pass


def _limits(cfg: Config) -> TransportLimits:
    return TransportLimits(
        chunk_bytes=cfg.chunk_bytes,
        inflight_bytes=max(1, int(cfg.inflight_models * cfg.model_bytes)),
    )


def coordinator_main(cfg: Config, conn: Any) -> None:
    bundle = TlsBundle.load(cfg.pki / "coordinator")

    def peer_check(pem: bytes) -> str:
        return check_peer_certificate(pem, bundle.ca_pem, set(), role="site")

    collector = Collector(cfg.sites)
    server = CoordinatorServer(
        "127.0.0.1:0", collector, tls=bundle, peer_check=peer_check, limits=_limits(cfg)
    )
    conn.send(server.start())
    with collector.cond:
        collector.cond.wait_for(lambda: len(collector.links) == cfg.sites, timeout=120)
    baseline = psutil.Process().memory_info().rss
    n = cfg.model_bytes // 4
    params = np.random.default_rng(0).normal(size=n).astype(np.float32)
    rounds: list[dict[str, float]] = []
    walls = []
    for r in range(cfg.rounds):
        collector.accumulator = StreamingMean(n)
        collector.rtt = {}
        started = time.perf_counter()
        for name, link in collector.links.items():
            collector.sent_at[name] = time.perf_counter()
            link.send(Envelope.create("train", RUN, r, vector=params))
        with collector.cond:
            collector.cond.wait_for(lambda: len(collector.rtt) == cfg.sites, timeout=600)
        walls.append(time.perf_counter() - started)
        rounds.append(dict(collector.rtt))
        collector.accumulator = None  # the round's aggregate is consumed
    for link in collector.links.values():
        link.send(Envelope.create("stop", RUN, cfg.rounds))
        link.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send({"rounds": rounds, "walls": walls, "baseline": baseline, "peak": peak})
    conn.recv()  # wait until the sites are gone
    server.stop(0)


def site_main(cfg: Config, name: str, port: int) -> None:
    bundle = TlsBundle.load(cfg.pki / name)
    session = open_session(f"127.0.0.1:{port}", tls=bundle, limits=_limits(cfg))
    for env in session:
        if env.kind == "stop":
            break
        # The "update": the model it received, streamed back at the same size.
        session.send(Envelope.create("update", RUN, env.round, vector=env.vector))
    session.close()


def streaming(cfg: Config, sites: int) -> dict[str, Any]:
    cfg = Config(**{**cfg.__dict__, "sites": sites})
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    coord = ctx.Process(target=coordinator_main, args=(cfg, child))
    coord.start()
    port = parent.recv()
    procs = [ctx.Process(target=site_main, args=(cfg, f"site{i}", port)) for i in range(sites)]
    for p in procs:
        p.start()
    result: dict[str, Any] = parent.recv()
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
            assert len(reply) == len(payload)
    server.stop(0)
    return times


def make_pki(root: Path, sites: int) -> None:
    ca = init_study_ca(root / "ca", "bench")
    issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
    for i in range(sites):
        issue_bundle(ca, f"site{i}", root / f"site{i}", "site")


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=float, default=100.0)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--mem-sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-mib", type=float, default=4.0)
    parser.add_argument(
        "--inflight-models",
        type=float,
        default=1.0,
        help="updates the coordinator reassembles at once, in model sizes",
    )
    args = parser.parse_args()
    model_bytes = int(args.model_mb * 1e6) // 4 * 4
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_pki(pki, max(args.sites, args.mem_sites))
        cfg = Config(
            pki,
            model_bytes,
            args.sites,
            args.rounds,
            int(args.chunk_mib * (1 << 20)),
            args.inflight_models,
        )
        print(
            f"model {model_bytes / 1e6:.0f} MB float32, chunks {args.chunk_mib:g} MiB, "
            f"mTLS on loopback, {args.rounds} rounds, coordinator reassembles "
            f"{args.inflight_models:g} model(s) at once, {psutil.cpu_count()} CPUs"
        )
        ref = statistics.median(unary_reference(cfg, args.rounds))
        print(
            f"reference, one unary message each way, 1 client: round trip {ref:.3f} s, "
            f"{gbps(2 * model_bytes, ref):.2f} GB/s"
        )
        for sites in sorted({1, args.sites}):
            res = streaming(cfg, sites)
            per_site = [t for rnd in res["rounds"][1:] or res["rounds"] for t in rnd.values()]
            rtt = statistics.median(per_site)
            wall = statistics.median(res["walls"][1:] or res["walls"])
            print(
                f"chunked stream, {sites} site process(es): per-site round trip median {rtt:.3f} s "
                f"-> {gbps(2 * model_bytes, rtt):.2f} GB/s per site "
                f"({ref / rtt:.2f}x the unary reference); round {wall:.3f} s, "
                f"coordinator total {gbps(2 * model_bytes * sites, wall):.2f} GB/s"
            )
        res = streaming(Config(**{**cfg.__dict__, "rounds": 2}), args.mem_sites)
        extra = res["peak"] - res["baseline"]
        print(
            f"coordinator memory, {args.mem_sites} sites: peak RSS {res['peak'] / 1e6:.0f} MB, "
            f"{extra / 1e6:.0f} MB above its RSS before the model existed "
            f"= {extra / model_bytes:.2f}x the model (of which the model 1x and the float64 "
            f"running sum 2x)"
        )


if __name__ == "__main__":
    main()
