"""gRPC server and client for one long-lived stream per site, mutual TLS by default.

The coordinator listens; each site connects *out* and keeps one bidirectional stream
(hospital firewalls allow outbound only). Both ends move :class:`Envelope` values as
frame sequences (see :mod:`fedcare.net.serde`). Who a site is comes from its verified
certificate, through ``peer_check`` (CA, expiry, revocation, role), never from a field it
sends. Plain text exists only for loopback tests, behind an explicit flag, with a warning.

Frames travel as raw bytes through a generic gRPC method handler (identity
serializers): chunk frames are hand-encoded from a view of the vector and parsed back
to a view of the received bytes (:mod:`fedcare.net.serde`), so the only copies per chunk
are gRPC's own and the one into the destination.

Memory: a reader reassembles at most one message at a time per stream, and all streams
together reassemble at most ``TransportLimits.inflight_bytes`` of vectors at once
(:class:`ByteBudget`); a site whose update must wait is held back by HTTP/2 flow control,
so the coordinator holds a few chunks for it, not its whole update. A handler that
defines ``begin(link, head)`` may instead take a vector chunk by chunk as it arrives
(:class:`~fedcare.net.serde.ChunkSink`): nothing is reassembled, and because the sink
runs on the stream's reader thread, a slow sink stops the reader, the HTTP/2 window
fills and the site's sender waits: a few chunks are buffered per site, never more.
"""

from __future__ import annotations

import ctypes
import ipaddress
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import grpc

from fedcare.core.errors import ConfigError, FedcareError, ProtocolError
from fedcare.net.serde import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_VECTOR_BYTES,
    ChunkSink,
    EncodedEnvelope,
    FrameAssembler,
    VectorHead,
)
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import ErrorReport

INSECURE_IDENTITY_KEY = "fedcare-insecure-site"  # metadata, honoured only by an --insecure server
INSECURE_WARNING = (
    "WARNING: --insecure: plain-text gRPC without certificates. Anyone on this host can "
    "read the traffic and claim to be any site. Use only for loopback tests."
)

PeerCheck = Callable[[bytes], str]
"""Verify a peer's PEM certificate and return its identity; raise ProtocolError to refuse."""


class TransportError(FedcareError):
    """The connection failed or was refused; ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code

    @property
    def refused(self) -> bool:
        """The coordinator refused us (certificate): retrying will not help."""
        return self.code in {"PERMISSION_DENIED", "UNAUTHENTICATED"}


class TlsMaterial(Protocol):
    """The PEM material one end presents (fedcare.net.tls.TlsBundle)."""

    @property
    def ca_pem(self) -> bytes: ...

    @property
    def cert_pem(self) -> bytes: ...

    @property
    def key_pem(self) -> bytes: ...


@dataclass(frozen=True)
class TransportLimits:
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_vector_bytes: int = DEFAULT_MAX_VECTOR_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    inflight_bytes: int = 1 << 30  # vectors reassembled at once, over all streams
    keepalive_s: float = 20.0
    keepalive_timeout_s: float = 10.0
    lookahead_bytes: int | None = None  # HTTP/2 read-ahead per stream; None: one chunk

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1024:
            raise ConfigError(f"chunk_bytes must be >= 1024, found {self.chunk_bytes}")
        if self.inflight_bytes < 1:
            raise ConfigError(f"inflight_bytes must be >= 1, found {self.inflight_bytes}")
        if self.keepalive_s <= 0 or self.keepalive_timeout_s <= 0:
            raise ConfigError("keepalive_s and keepalive_timeout_s must be > 0")
        if self.lookahead_bytes is not None and self.lookahead_bytes < 1024:
            raise ConfigError(f"lookahead_bytes must be >= 1024, found {self.lookahead_bytes}")

    @property
    def read_ahead_bytes(self) -> int:
        return self.chunk_bytes if self.lookahead_bytes is None else self.lookahead_bytes

    @property
    def max_frame_bytes(self) -> int:
        """gRPC's per-message limit: one chunk or one head, plus protobuf overhead."""
        return max(self.chunk_bytes, self.max_header_bytes) + (64 << 10)

    def grpc_options(self, server: bool) -> list[tuple[str, Any]]:
        keepalive_ms = int(self.keepalive_s * 1000)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_frame_bytes),
            ("grpc.max_receive_message_length", self.max_frame_bytes),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Bound what gRPC buffers per stream: without this its bandwidth-delay probe
            # grows each stream's window until a site's whole update sits in memory. gRPC
            # always lets the message in progress complete; the read-ahead is on top.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", self.read_ahead_bytes),
        ]
        if server:
            # Accept the sites' keep-alive pings instead of answering them with GOAWAY.
            options.append(("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms // 2))
        return options


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address must be HOST:PORT, found '{address}'")
    return host, int(port)


def require_loopback(address: str) -> None:
    """``--insecure`` is refused for anything but loopback, and always warns."""
    host, _ = split_address(address)
    if not is_loopback(host):
        raise ConfigError(
            f"--insecure is only allowed on loopback (localhost, 127.0.0.1, ::1), "
            f"found '{host}'; use the study certificates instead"
        )
    print(INSECURE_WARNING, file=sys.stderr, flush=True)


@dataclass
class Backoff:
    """Exponential back-off with jitter for reconnecting: 0.5 s, 1 s, 2 s ... capped."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.maximum_s, self.initial_s * self.multiplier**self.attempt)
        self.attempt += 1
        return base * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0))

    def reset(self) -> None:
        self.attempt = 0


def tame_allocator(arenas: int = 2, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed chunk buffers from piling up in glibc's per-thread arenas, and reuse them.

    Every stream has reader and writer threads that allocate and free chunk-sized buffers;
    glibc gives each thread its own arena, so RSS grew by tens of MB per site without any
    live data: two arenas keep memory proportional to what is actually held. The mmap
    threshold is fixed at glibc's maximum (32 MiB) so chunk buffers are reused from the
    heap: below the chunk size every buffer is a fresh mapping whose pages are faulted in
    and zeroed, which cost about a quarter of the coordinator's CPU at 1 MiB. Buffers of
    whole vectors (above the threshold) still go back to the OS when freed. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold = -8, -3
        return bool(
            libc.mallopt(m_arena_max, arenas) and libc.mallopt(m_mmap_threshold, mmap_threshold)
        )
    except (OSError, AttributeError):
        return False


class ByteBudget:
    """At most ``capacity`` bytes reserved at once; one request larger than the whole
    budget is let through alone, so a model bigger than the budget still works."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + nbytes <= self.capacity)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.in_use -= nbytes
            self._cond.notify_all()


_CLOSE = object()

# The one RPC, served and called with identity (bytes) serializers: frames are
# encoded and parsed by fedcare.net.serde, never as protobuf message objects.
SERVICE = "fedcare.v1.Federation"
CONNECT = f"/{SERVICE}/Connect"

Outgoing = Envelope | EncodedEnvelope
"""What a stream sends: an envelope, or one already encoded (to send the same to many)."""


def _frames(outbox: queue.Queue[Any], chunk_bytes: int) -> Iterator[bytes]:
    """Wire frames of whatever is put in ``outbox``, until ``_CLOSE``."""
    while True:
        item = outbox.get()
        if item is _CLOSE:
            return
        encoded = item if isinstance(item, EncodedEnvelope) else EncodedEnvelope(item, chunk_bytes)
        del item  # hold no vector while waiting for the next message
        yield from encoded.frames()
        del encoded


class Link:
    """The coordinator's end of one site's stream: send envelopes, close it."""

    def __init__(self, identity: str, context: grpc.ServicerContext) -> None:
        self.identity = identity
        self._context = context
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.closed = threading.Event()
        self.closed_here = threading.Event()  # the coordinator ended the stream itself

    def send(self, env: Outgoing) -> None:
        if not self.closed.is_set():
            self._outbox.put(env)

    def close(self) -> None:
        """End the stream after what was already queued has been sent."""
        if not self.closed.is_set():
            self.closed_here.set()
        self._outbox.put(_CLOSE)

    def _outgoing(self, chunk_bytes: int) -> Iterator[bytes]:
        return _frames(self._outbox, chunk_bytes)


class LinkHandler(Protocol):
    """What the coordinator server does with its sites' streams (called from reader threads)."""

    def connected(self, link: Link) -> None: ...

    def received(self, link: Link, env: Envelope) -> None: ...

    def disconnected(self, link: Link, reason: str) -> None: ...


class ChunkingHandler(LinkHandler, Protocol):
    """A handler that may take vectors chunk by chunk (opt-in: ``begin`` is looked up).

    ``begin`` sees each message that carries a vector before its first chunk, stamped
    with the sender. It returns a sink to receive the vector piece by piece (``received``
    is then not called for that message; the sink's ``close`` is its completion), or
    None to have the message reassembled and delivered to ``received`` as usual.
    """

    def begin(self, link: Link, head: VectorHead) -> ChunkSink | None: ...


def _read_stream(
    messages: Iterator[bytes],
    limits: TransportLimits,
    budget: ByteBudget | None,
    deliver: Callable[[Envelope], None],
    begin: Callable[[VectorHead], ChunkSink | None] | None = None,
) -> None:
    """Reassemble envelopes from wire frames, holding budget while a vector is being built."""
    held = 0

    def start(head: VectorHead) -> ChunkSink | None:
        nonlocal held
        sink = begin(head) if begin is not None else None
        if sink is None and budget is not None:
            budget.acquire(head.nbytes)
            held = head.nbytes
        return sink

    assembler = FrameAssembler(limits.max_vector_bytes, limits.max_header_bytes, begin=start)
    try:
        for message in messages:
            env = assembler.feed_bytes(message)
            if env is not None:
                deliver(env)
                env = None  # drop the vector before giving its budget back
                if budget is not None and held:
                    budget.release(held)
                held = 0
        if assembler.busy:
            raise ProtocolError("stream ended in the middle of a message")
    except BaseException as exc:
        assembler.abort(f"stream failed: {exc}")
        raise
    finally:
        if budget is not None and held:
            budget.release(held)


class _Servicer:
    def __init__(
        self,
        handler: LinkHandler,
        limits: TransportLimits,
        peer_check: PeerCheck | None,
        budget: ByteBudget,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.peer_check = peer_check
        self.budget = budget
        self.stopping = threading.Event()  # the server is shutting down

    def _identify(self, context: grpc.ServicerContext) -> str:
        if self.peer_check is None:  # --insecure loopback only
            claimed = dict(context.invocation_metadata()).get(INSECURE_IDENTITY_KEY)
            if not claimed:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"insecure server: no '{INSECURE_IDENTITY_KEY}' metadata",
                )
            return str(claimed)
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate presented")
        try:
            return self.peer_check(certs[0])
        except ProtocolError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"certificate refused: {exc}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def connect(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        link = Link(self._identify(context), context)
        self.handler.connected(link)
        chunking = getattr(self.handler, "begin", None)

        def begin(head: VectorHead) -> ChunkSink | None:
            if chunking is None:
                return None
            stamped = replace(head, envelope=head.envelope.from_peer(link.identity))
            return cast(ChunkSink | None, chunking(link, stamped))

        def read() -> None:
            reason = "the site closed the stream"
            try:
                _read_stream(
                    request_iterator,
                    self.limits,
                    self.budget,
                    lambda env: self.handler.received(link, env.from_peer(link.identity)),
                    begin,
                )
                reason = self._ended_here(link) or (
                    _lost(grpc.RpcError()) if _cancelled(context) else reason
                )
            except ProtocolError as exc:
                reason = f"malformed stream: {_text(exc)}"
                link.send(malformed_report(reason))  # the site learns why, then the stream ends
            except grpc.RpcError as exc:
                reason = self._ended_here(link) or _lost(exc)
            except Exception as exc:  # a bug in the handler must not kill the server
                reason = f"internal error: {type(exc).__name__}: {_text(exc)}"
            finally:
                link.closed.set()
                link.close()
                self.handler.disconnected(link, reason)

        threading.Thread(target=read, name=f"read-{link.identity}", daemon=True).start()
        yield from link._outgoing(self.limits.chunk_bytes)

    def _ended_here(self, link: Link) -> str:
        """Why a stream ended from this side ("" if the site ended it)."""
        if self.stopping.is_set():
            return "the coordinator is shutting down"
        if link.closed_here.is_set():
            return "the coordinator closed the stream (the run is over or the site reconnected)"
        return ""

    def generic_handler(self) -> grpc.GenericRpcHandler:
        connect = grpc.stream_stream_rpc_method_handler(self.connect)  # bytes in, bytes out
        return grpc.method_handlers_generic_handler(SERVICE, {"Connect": connect})


def malformed_report(reason: str) -> Envelope:
    """What a site is told before its stream is cut for a frame the coordinator could not
    decode (no run is named: the frame may not have said which)."""
    return ErrorReport("", 0, "malformed", reason).to_envelope()


def _text(exc: BaseException) -> str:
    """An exception's message, or its type when it has none (a reason is never empty)."""
    return str(exc).strip() or type(exc).__name__


def _cancelled(context: grpc.ServicerContext, wait_s: float = 0.2) -> bool:
    """Whether a request stream that just ended was cut rather than closed: gRPC can end
    the iterator quietly before it marks a cancelled call inactive."""
    deadline = time.monotonic() + wait_s
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _lost(exc: grpc.RpcError) -> str:
    """Why a site's stream broke. gRPC's server side raises a bare RpcError, without code
    or details, when the site cancels its call or its process or network goes away."""
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if details and details.strip():
        return f"connection lost: {details.strip()}"
    return (
        "connection lost: the site's stream ended without a goodbye (its agent stopped or "
        "crashed, or the network dropped)"
    )


class CoordinatorServer:
    """The listening end. ``peer_check=None`` only together with ``insecure=True``."""

    def __init__(
        self,
        address: str,
        handler: LinkHandler,
        *,
        tls: TlsMaterial | None,
        peer_check: PeerCheck | None,
        limits: TransportLimits | None = None,
        insecure: bool = False,
        max_sites: int = 64,
    ) -> None:
        if insecure:
            require_loopback(address)
        elif tls is None or peer_check is None:
            raise ConfigError(
                "the coordinator needs its TLS bundle and a certificate check "
                "(or --insecure for loopback tests)"
            )
        self.limits = limits or TransportLimits()
        tame_allocator()
        self.budget = ByteBudget(self.limits.inflight_bytes)
        servicer = _Servicer(handler, self.limits, None if insecure else peer_check, self.budget)
        self._servicer = servicer
        # Each site holds two threads: the response generator and its reader.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_sites + 4, thread_name_prefix="grpc"),
            options=self.limits.grpc_options(server=True),
            maximum_concurrent_rpcs=max_sites,
        )
        self._server.add_generic_rpc_handlers((servicer.generic_handler(),))
        if insecure or tls is None:
            self.port = int(self._server.add_insecure_port(address))
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key_pem, tls.cert_pem)],
                root_certificates=tls.ca_pem,
                require_client_auth=True,
            )
            self.port = int(self._server.add_secure_port(address, creds))
        if self.port == 0:
            raise ConfigError(f"could not listen on '{address}' (port in use or bad address)")

    def start(self) -> int:
        self._server.start()
        return self.port

    def stop(self, grace_s: float | None = 1.0) -> None:
        self._servicer.stopping.set()
        self._server.stop(grace_s).wait()


class SiteSession:
    """A site's open stream: ``send`` envelopes, iterate to receive them."""

    def __init__(
        self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]], limits: TransportLimits
    ) -> None:
        self._channel = channel
        self._limits = limits
        self._outbox: queue.Queue[Any] = queue.Queue()
        connect = channel.stream_stream(CONNECT)  # no serializers: frames are bytes
        self._call = connect(_frames(self._outbox, limits.chunk_bytes), metadata=tuple(metadata))

    def send(self, env: Outgoing) -> None:
        self._outbox.put(env)

    def __iter__(self) -> Iterator[Envelope]:
        """Envelopes from the coordinator until it closes the stream; TransportError on failure."""
        assembler = FrameAssembler(self._limits.max_vector_bytes, self._limits.max_header_bytes)
        try:
            for message in self._call:
                env = assembler.feed_bytes(message)
                if env is not None:
                    yield env.from_peer("coordinator")
                    del env  # the caller decides how long the vector lives
        except grpc.RpcError as exc:
            raise _transport_error(exc) from None

    def close(self) -> None:
        self._outbox.put(_CLOSE)

    def cancel(self) -> None:
        self._call.cancel()
        self._channel.close()


# What a gRPC status means for a site's stream, when gRPC gives no details.
_STATUS_MEANING = {
    "CANCELLED": "the stream was cancelled (the coordinator stopped or ended it)",
    "UNAVAILABLE": "the coordinator is unreachable (stopped, restarting, or the network dropped)",
    "DEADLINE_EXCEEDED": "the coordinator did not answer in time",
    "INTERNAL": "the connection failed inside gRPC",
}


def _transport_error(exc: grpc.RpcError) -> TransportError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    reason = details.strip() or _STATUS_MEANING.get(name, "gRPC gave no details")
    return TransportError(f"coordinator connection {name}: {reason}", name)


def open_session(
    target: str,
    *,
    tls: TlsMaterial | None,
    identity_if_insecure: str | None = None,
    limits: TransportLimits | None = None,
    server_name: str | None = None,
    connect_timeout_s: float = 10.0,
) -> SiteSession:
    """Connect out to the coordinator; raise TransportError if it cannot be reached in time.

    ``tls=None`` is the ``--insecure`` loopback mode: the identity is then only claimed
    (metadata), which a secure coordinator ignores.
    """
    limits = limits or TransportLimits()
    tame_allocator()
    options = limits.grpc_options(server=False)
    metadata: list[tuple[str, str]] = []
    if tls is None:
        require_loopback(target)
        if not identity_if_insecure:
            raise ConfigError("an --insecure site must still say which site it is")
        channel = grpc.insecure_channel(target, options=options)
        metadata.append((INSECURE_IDENTITY_KEY, identity_if_insecure))
    else:
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
        )
        channel = grpc.secure_channel(target, creds, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=connect_timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TransportError(
            f"could not reach the coordinator at {target} within {connect_timeout_s:.0f} s "
            "(not running, wrong address, or the TLS handshake failed: check the bundle's CA)",
            "UNAVAILABLE",
        ) from None
    return SiteSession(channel, metadata, limits)
