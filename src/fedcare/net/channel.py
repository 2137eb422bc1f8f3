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
so the coordinator holds a few chunks for it, not its whole update. A stream's share of
the budget is that one message, which the handler's ``admit`` bounds (the run's plan:
:mod:`fedcare.net.admission`) before anything is reserved, held for at most
``TransportLimits.hold_deadline_s``: a sender that declares a message and then stalls is
cut with that reason, so it cannot keep honest sites' updates waiting.

One live stream per identity (:mod:`fedcare.net.live_streams`): a second connection with
a certificate whose site already has a live stream is refused (ALREADY_EXISTS, saying
where and since when the first connected) and the first is told. A stream is live until
its RPC ends; a peer that vanished without closing is found by gRPC keep-alive (the
coordinator pings every ``keepalive_s`` and drops a connection that does not answer
within ``keepalive_timeout_s``), so a dead stream frees its site within
``keepalive_s + keepalive_timeout_s``. A handler that
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
from fedcare.net.live_streams import LiveStreams
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
        """The coordinator refused us (certificate, not in the plan) or TLS cannot succeed
        (see :mod:`fedcare.net.tls_probe`): retrying will not help."""
        return self.code in {"PERMISSION_DENIED", "UNAUTHENTICATED", TLS_FAILED}


TLS_FAILED = "TLS_FAILED"  # TransportError.code when a TLS probe named a lasting failure


class StreamRefusedError(FedcareError):
    """Raised by a handler's ``connected`` to refuse a stream; the site gets ``status``
    (a gRPC status name) and this message."""

    def __init__(self, message: str, status: str = "PERMISSION_DENIED") -> None:
        super().__init__(message)
        self.status = status


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
    # How long one stream may hold its share of the in-flight budget (one message): a
    # fixed allowance plus the message's size at a slow hospital uplink (2 Mbit/s).
    hold_s: float = 60.0
    min_rate_bytes_s: float = 256 << 10

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1024:
            raise ConfigError(f"chunk_bytes must be >= 1024, found {self.chunk_bytes}")
        if self.inflight_bytes < 1:
            raise ConfigError(f"inflight_bytes must be >= 1, found {self.inflight_bytes}")
        if self.keepalive_s <= 0 or self.keepalive_timeout_s <= 0:
            raise ConfigError("keepalive_s and keepalive_timeout_s must be > 0")
        if self.lookahead_bytes is not None and self.lookahead_bytes < 1024:
            raise ConfigError(f"lookahead_bytes must be >= 1024, found {self.lookahead_bytes}")
        if self.hold_s <= 0 or self.min_rate_bytes_s <= 0:
            raise ConfigError(
                f"hold_s and min_rate_bytes_s must be > 0, found {self.hold_s} and "
                f"{self.min_rate_bytes_s}"
            )

    def hold_deadline_s(self, nbytes: int) -> float:
        """Seconds a stream may hold ``nbytes`` of the in-flight budget before it is cut."""
        return self.hold_s + nbytes / self.min_rate_bytes_s

    @property
    def liveness_s(self) -> float:
        """At most this long after a peer vanishes, keep-alive declares its stream dead."""
        return self.keepalive_s + self.keepalive_timeout_s

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
            # gRPC >= 1.5x times an unanswered ping with this, not the keep-alive timeout.
            ("grpc.http2.ping_timeout_ms", int(self.keepalive_timeout_s * 1000)),
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
            # gRPC shares a port with any other process that does (SO_REUSEPORT) by
            # default: a second coordinator on the port would silently take half the sites.
            options.append(("grpc.so_reuseport", 0))
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


NOTICE_KIND = "transport_notice"
"""A line for the site's terminal from the transport (not a protocol message: the agent
logs it and the site machine never sees it)."""


def notice_envelope(text: str) -> Envelope:
    return Envelope.create(NOTICE_KIND, "transport", 0, {"text": text})


def notice_text(env: Envelope) -> str:
    return str(env.header.get("text", "")) or "(empty notice)"


class Link:
    """The coordinator's end of one site's stream: send envelopes, close it."""

    def __init__(
        self, identity: str, context: grpc.ServicerContext | None, peer: str = "unknown"
    ) -> None:
        self.identity = identity
        self.peer = peer  # where the stream comes from (address:port), for messages
        self.since = time.time()  # wall clock, only ever shown to people
        self._context = context
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.closed = threading.Event()
        self.closed_here = threading.Event()  # the coordinator ended the stream itself
        self.end_reason = ""  # why the coordinator ended it, told to the site as a status
        self.end_status = "OK"

    @property
    def live(self) -> bool:
        """Neither end has closed it and gRPC still holds the call (keep-alive answers)."""
        if self.closed.is_set() or self.closed_here.is_set():
            return False
        return self._context is None or bool(self._context.is_active())

    def send(self, env: Outgoing) -> None:
        if not self.closed.is_set():
            self._outbox.put(env)

    def close(self, reason: str = "", status: str = "OK") -> None:
        """End the stream after what was already queued has been sent; with a ``reason``
        the site receives it as the call's status (``status``: a gRPC status name)."""
        if not self.closed_here.is_set() and reason:
            self.end_reason, self.end_status = reason, status
        if not self.closed.is_set():
            self.closed_here.set()
        self._outbox.put(_CLOSE)

    def cut(self, reason: str, status: str) -> None:
        """End the stream now, dropping what is queued, and tell the site why."""
        self.end_reason, self.end_status = reason, status
        self.closed_here.set()
        while True:  # whatever is queued would only delay the reason
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                break
        self._outbox.put(_CLOSE)
        if self._context is not None:
            # The reader may be blocked on the site's next frame: end the call itself too.
            threading.Timer(2.0, self._context.cancel).start()

    def _outgoing(self, chunk_bytes: int) -> Iterator[bytes]:
        return _frames(self._outbox, chunk_bytes)


class LinkHandler(Protocol):
    """What the coordinator server does with its sites' streams (called from reader threads)."""

    def connected(self, link: Link) -> None: ...

    def received(self, link: Link, env: Envelope) -> None: ...

    def disconnected(self, link: Link, reason: str) -> None: ...


class AdmittingHandler(LinkHandler, Protocol):
    """Optional hooks (looked up by name), called from the stream's threads.

    ``admit`` sees each head that announces a vector before any of it is reserved or
    buffered, and raises ProtocolError to refuse it (the stream is cut with that reason).
    ``duplicate_refused`` hears that a second stream for ``first``'s site was refused.
    """

    def admit(self, link: Link, head: VectorHead) -> None: ...

    def duplicate_refused(self, first: Link, peer: str, reason: str) -> None: ...


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
    overdue: Callable[[str], None] | None = None,
) -> None:
    """Reassemble envelopes from wire frames, holding budget while a vector is being built.

    The budget a message holds is its share; if its last chunk has not arrived within
    ``limits.hold_deadline_s`` of reserving it, ``overdue`` is called with the reason (the
    caller cuts the stream, which ends this loop and gives the share back).
    """
    held = 0
    timer: threading.Timer | None = None

    def start(head: VectorHead) -> ChunkSink | None:
        nonlocal held, timer
        sink = begin(head) if begin is not None else None
        if sink is None and budget is not None:
            budget.acquire(head.nbytes)
            held = head.nbytes
            if overdue is not None:
                deadline = limits.hold_deadline_s(head.nbytes)
                reason = (
                    f"message '{head.envelope.kind}' of {head.nbytes} bytes held its share of "
                    f"the coordinator's in-flight budget for {deadline:.0f} s without arriving "
                    "in full; the stream is closed so other sites' messages can go through"
                )
                timer = threading.Timer(deadline, overdue, args=(reason,))
                timer.daemon = True
                timer.start()
        return sink

    def settle() -> None:
        nonlocal held, timer
        if timer is not None:
            timer.cancel()
            timer = None
        if budget is not None and held:
            budget.release(held)
        held = 0

    assembler = FrameAssembler(limits.max_vector_bytes, limits.max_header_bytes, begin=start)
    try:
        for message in messages:
            env = assembler.feed_bytes(message)
            if env is not None:
                if timer is not None:
                    timer.cancel()  # it arrived in time; handling it is not the site's delay
                deliver(env)
                env = None  # drop the vector before giving its budget back
                settle()
        if assembler.busy:
            raise ProtocolError("stream ended in the middle of a message")
    except BaseException as exc:
        assembler.abort(f"stream failed: {exc}")
        raise
    finally:
        settle()


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
        self.streams = LiveStreams()  # one live stream per site identity
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
        link = Link(self._identify(context), context, _peer_address(context.peer()))
        first = self.streams.claim(link)
        if first is not None:
            self._refuse_duplicate(first, link, context)
        if not context.add_callback(lambda: self.streams.release(link)):
            self.streams.release(link)  # the call already ended
        try:
            self.handler.connected(link)
        except StreamRefusedError as exc:
            self.streams.release(link)
            context.abort(_status(exc.status), _text(exc))
        chunking = getattr(self.handler, "begin", None)
        admit = getattr(self.handler, "admit", None)

        def begin(head: VectorHead) -> ChunkSink | None:
            stamped = replace(head, envelope=head.envelope.from_peer(link.identity))
            if admit is not None:
                admit(link, stamped)  # ProtocolError: refused before anything is reserved
            if chunking is None:
                return None
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
                    overdue=lambda why: link.cut(why, "RESOURCE_EXHAUSTED"),
                )
                reason = self._ended_here(link) or (
                    _lost(grpc.RpcError()) if _cancelled(context) else reason
                )
            except ProtocolError as exc:
                reason = self._ended_here(link) or f"malformed stream: {_text(exc)}"
                link.send(malformed_report(reason))  # a typed error first, then the
                link.close(reason, "INVALID_ARGUMENT")  # call status says it too
            except grpc.RpcError as exc:
                reason = self._ended_here(link) or _lost(exc)
            except Exception as exc:  # a bug in the handler must not kill the server
                reason = f"internal error: {type(exc).__name__}: {_text(exc)}"
                link.close("the coordinator failed handling this stream's message", "INTERNAL")
            finally:
                link.closed.set()
                link.close()
                self.handler.disconnected(link, reason)

        threading.Thread(target=read, name=f"read-{link.identity}", daemon=True).start()
        yield from link._outgoing(self.limits.chunk_bytes)
        if link.end_reason and link.end_status != "OK":
            context.abort(_status(link.end_status), link.end_reason)

    def _refuse_duplicate(self, first: Link, second: Link, context: grpc.ServicerContext) -> None:
        """Refuse ``second``: its site already has the live stream ``first``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first.since))
        reason = (
            f"site '{second.identity}' is already connected from {first.peer} since {since}; "
            f"stop the other agent or wait (a connection that died is dropped within "
            f"{self.limits.liveness_s:.0f} s)"
        )
        first.send(
            notice_envelope(
                f"another agent with this site's identity ('{first.identity}') connected from "
                f"{second.peer} and was refused while this one is connected; if that was not "
                "you, this site's bundle may be in someone else's hands"
            )
        )
        heard = getattr(self.handler, "duplicate_refused", None)
        if heard is not None:
            heard(first, second.peer, reason)
        context.abort(grpc.StatusCode.ALREADY_EXISTS, reason)

    def _ended_here(self, link: Link) -> str:
        """Why a stream ended from this side ("" if the site ended it)."""
        if self.stopping.is_set():
            return "the coordinator is shutting down"
        if link.end_reason:
            return link.end_reason
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


def _status(name: str) -> grpc.StatusCode:
    return cast(grpc.StatusCode, getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN))


def _peer_address(peer: str) -> str:
    """gRPC's ``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` as ``127.0.0.1:5000``."""
    scheme, sep, rest = peer.partition(":")
    return rest if sep and scheme in {"ipv4", "ipv6", "unix"} else peer or "unknown"


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
        try:
            if insecure or tls is None:
                self.port = int(self._server.add_insecure_port(address))
            else:
                creds = grpc.ssl_server_credentials(
                    [(tls.key_pem, tls.cert_pem)],
                    root_certificates=tls.ca_pem,
                    require_client_auth=True,
                )
                self.port = int(self._server.add_secure_port(address, creds))
        except RuntimeError:  # gRPC: "Failed to bind to address ..."
            self.port = 0
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
        raise _unreachable(target, tls, server_name, connect_timeout_s) from None
    return SiteSession(channel, metadata, limits)


def _unreachable(
    target: str, tls: TlsMaterial | None, server_name: str | None, waited_s: float
) -> TransportError:
    """Why gRPC could not connect: with TLS, one direct probe names a TLS failure, which
    is lasting (``TLS_FAILED``, not retried); anything else may pass (``UNAVAILABLE``)."""
    from fedcare.net.tls_probe import probe_tls

    lead = f"could not reach the coordinator at {target} within {waited_s:.0f} s"
    if tls is None:
        return TransportError(f"{lead} (not running, or wrong address)", "UNAVAILABLE")
    host, port = split_address(target)
    found = probe_tls(host, port, tls, server_name)
    return TransportError(f"{lead}: {found.text}", TLS_FAILED if found.lasting else "UNAVAILABLE")
