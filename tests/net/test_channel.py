"""The gRPC channel: mutual TLS, identity from the certificate, refusals, limits, back-off."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.net.channel import (
    CONNECT,
    INSECURE_IDENTITY_KEY,
    Backoff,
    ByteBudget,
    CoordinatorServer,
    Link,
    TransportError,
    TransportLimits,
    _transport_error,
    open_session,
)
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.net.proto import fedcare_pb2_grpc as pb_grpc
from fedcare.net.serde import FrameAssembler, VectorHead, frames_to_envelopes, wire_frames
from fedcare.net.tls import (
    TlsBundle,
    check_peer_certificate,
    init_study_ca,
    issue_bundle,
    load_revoked,
    revoke,
)
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import ErrorReport

LIMITS = TransportLimits(chunk_bytes=64 << 10, keepalive_s=5)


@dataclass
class Study:
    ca_dir: Path
    bundles: dict[str, TlsBundle]

    def peer_check(self, pem: bytes) -> str:
        return check_peer_certificate(
            pem, self.bundles["coordinator"].ca_pem, load_revoked(self.ca_dir), role="site"
        )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("pki")
    ca = init_study_ca(root / "ca", "heart")
    other = init_study_ca(root / "other-ca", "elsewhere")
    bundles = {
        name: TlsBundle.load(issue_bundle(ca, name, root / name, "site"))
        for name in ("cleveland", "hungary", "basel")
    }
    bundles["coordinator"] = TlsBundle.load(
        issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")
    )
    bundles["coordinator2"] = TlsBundle.load(
        issue_bundle(ca, "coordinator2", root / "coordinator2", "coordinator")
    )
    bundles["intruder"] = TlsBundle.load(issue_bundle(other, "cleveland", root / "intr", "site"))
    revoke(ca, "basel")
    return Study(ca, bundles)


@dataclass
class Echo:
    """Records who sent what, answers each envelope with its sender's identity."""

    got: list[Envelope] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    disconnected_event: threading.Event = field(default_factory=threading.Event)
    hold_s: float = 0.0

    def connected(self, link: Link) -> None:
        self.joined.append(link.identity)

    def received(self, link: Link, env: Envelope) -> None:
        time.sleep(self.hold_s)
        self.got.append(env)
        link.send(
            Envelope.create("echo", env.run_id, env.round, {"sender": env.sender}, env.vector)
        )

    def disconnected(self, link: Link, reason: str) -> None:
        self.gone.append(reason)
        self.disconnected_event.set()


@pytest.fixture
def server(study: Study) -> Iterator[tuple[CoordinatorServer, Echo, str]]:
    echo = Echo()
    srv = CoordinatorServer(
        "127.0.0.1:0",
        echo,
        tls=study.bundles["coordinator"],
        peer_check=study.peer_check,
        limits=LIMITS,
    )
    port = srv.start()
    yield srv, echo, f"127.0.0.1:{port}"
    srv.stop(0)


def exchange(session, env: Envelope) -> Envelope:
    session.send(env)
    reply = next(iter(session))
    session.close()
    return reply


def test_mtls_round_trip_streams_a_vector_in_chunks_and_names_the_site_from_its_certificate(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    session = open_session(target, tls=study.bundles["cleveland"], limits=LIMITS)
    vector = np.random.default_rng(0).normal(size=300_000).astype(np.float32)  # 1.2 MB, 19 chunks
    reply = exchange(session, Envelope.create("update", "run-1", 2, {"n": 199}, vector))
    assert echo.got[0].sender == "cleveland"
    assert echo.got[0].header == {"n": 199}
    assert reply.header == {"sender": "cleveland"}
    assert reply.sender == "coordinator"
    np.testing.assert_array_equal(reply.vector, vector)


def test_identity_claimed_in_metadata_is_ignored_by_a_secure_coordinator(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    bundle = study.bundles["hungary"]
    creds = grpc.ssl_channel_credentials(bundle.ca_pem, bundle.key_pem, bundle.cert_pem)
    with grpc.secure_channel(target, creds) as channel:
        stub = pb_grpc.FederationStub(channel)
        env = Envelope.create("hello", "run-1", 0)
        frames = iter([pb.Frame(head=pb.Head(kind=env.kind, run_id="run-1", nonce=env.nonce))])
        replies = stub.Connect(frames, metadata=((INSECURE_IDENTITY_KEY, "cleveland"),))
        next(replies)
    assert [e.sender for e in echo.got] == ["hungary"]


def refused(study: Study, target: str, bundle_name: str | None) -> TransportError:
    """Connect with a bundle (or no client certificate) and return how the connection failed."""
    if bundle_name is None:
        # A client that trusts the study CA but presents no certificate of its own.
        ca = study.bundles["coordinator"].ca_pem
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))
        replies = pb_grpc.FederationStub(channel).Connect(iter([]))
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
        channel.close()
        code = info.value.code()  # type: ignore[attr-defined]
        return TransportError("no client certificate", code.name)
    with pytest.raises(TransportError) as caught:
        hello(target, study.bundles[bundle_name])
    return caught.value


def hello(target: str, bundle: TlsBundle) -> Envelope:
    session = open_session(target, tls=bundle, limits=LIMITS, connect_timeout_s=1.5)
    return exchange(session, Envelope.create("hello", "run-1", 0))


def test_revoked_certificate_is_refused_and_not_worth_retrying(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    error = refused(study, target, "basel")
    assert error.code == "PERMISSION_DENIED"
    assert "revoked" in str(error)
    assert error.refused
    assert echo.joined == []


def test_coordinator_certificate_cannot_join_as_a_site(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    # Its certificate is for server authentication only: the TLS handshake already fails.
    refused(study, target, "coordinator2")
    assert echo.joined == []
    with pytest.raises(Exception, match="expected 'site'"):
        study.peer_check(study.bundles["coordinator2"].cert_pem)  # and the check would refuse it


def test_a_missing_client_certificate_fails_the_tls_handshake(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    error = refused(study, target, None)
    assert error.code == "UNAVAILABLE"
    assert echo.joined == [] and echo.got == []


def test_a_bundle_of_another_study_is_named_and_not_retried(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    # gRPC alone cannot tell this from a coordinator that is down; the TLS probe can.
    _, echo, target = server
    error = refused(study, target, "intruder")
    assert error.code == "TLS_FAILED" and error.refused
    assert "is not from this site's study CA" in str(error)
    assert echo.joined == [] and echo.got == []


def test_site_refuses_a_server_whose_certificate_is_not_a_coordinators(study: Study) -> None:
    # A site bundle has no host names: a client verifying the host refuses it as a server.
    echo = Echo()
    srv = CoordinatorServer(
        "127.0.0.1:0", echo, tls=study.bundles["hungary"], peer_check=study.peer_check
    )
    port = srv.start()
    try:
        with pytest.raises(TransportError):
            hello(f"127.0.0.1:{port}", study.bundles["cleveland"])
    finally:
        srv.stop(0)
    assert echo.got == []


def test_malformed_stream_is_cut_and_reported(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    bundle = study.bundles["cleveland"]
    creds = grpc.ssl_channel_credentials(bundle.ca_pem, bundle.key_pem, bundle.cert_pem)
    with grpc.secure_channel(target, creds) as channel:
        orphan = pb.Frame(chunk=pb.Chunk(offset=0, data=b"\0" * 8))
        replies = pb_grpc.FederationStub(channel).Connect(iter([orphan]))
        received: list[Envelope] = []
        with pytest.raises(grpc.RpcError) as cut:
            received.extend(frames_to_envelopes(iter(replies)))  # a typed report, then cut
    assert echo.disconnected_event.wait(5)
    assert "malformed stream" in echo.gone[0] and "no message head" in echo.gone[0]
    (told,) = received
    report = ErrorReport.from_envelope(told)
    assert report.code == "malformed" and "no message head" in report.message
    # The call's status says it too.
    assert cut.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert cut.value.details() == echo.gone[0]  # type: ignore[attr-defined]


def test_a_deeply_nested_header_gets_a_typed_error_back_and_other_sites_go_on(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    """The fuzzing find of issue 11: 100,000 nested lists in a header once raised
    RecursionError (an "internal error"); now the site is told what was wrong, and an
    honest site's stream carries on."""
    _, echo, target = server
    honest = open_session(target, tls=study.bundles["hungary"], limits=LIMITS)
    honest.send(Envelope.create("update", "run-1", 0, {"n": 1}))
    replies = iter(honest)
    assert next(replies).header == {"sender": "hungary"}
    env = Envelope.create("update", "run-1", 0)
    nested = "[" * 100_000 + "]" * 100_000
    head = pb.Head(kind="update", run_id="run-1", nonce=env.nonce, header_json=f'{{"a":{nested}}}')
    bundle = study.bundles["cleveland"]
    creds = grpc.ssl_channel_credentials(bundle.ca_pem, bundle.key_pem, bundle.cert_pem)
    with grpc.secure_channel(target, creds) as channel:
        answer = pb_grpc.FederationStub(channel).Connect(iter([pb.Frame(head=head)]))
        received = []
        with pytest.raises(grpc.RpcError):
            received.extend(frames_to_envelopes(iter(answer)))
    (told,) = received
    report = ErrorReport.from_envelope(told)
    assert report.code == "malformed"
    assert "nested 100001 levels deep; at most 32 are allowed" in report.message
    honest.send(Envelope.create("update", "run-1", 0, {"n": 2}))
    assert next(replies).header == {"sender": "hungary"}
    honest.close()
    assert [e.header for e in echo.got] == [{"n": 1}, {"n": 2}]


def test_frames_above_the_message_limit_are_refused(
    study: Study, server: tuple[CoordinatorServer, Echo, str]
) -> None:
    _, echo, target = server
    big = TransportLimits(chunk_bytes=4 << 20)  # this site sends 4 MiB chunks; server takes 64 KiB
    session = open_session(target, tls=study.bundles["cleveland"], limits=big)
    session.send(Envelope.create("update", "run-1", 0, vector=np.zeros(1 << 20, np.float32)))
    with pytest.raises(TransportError, match=r"RESOURCE_EXHAUSTED|larger than max"):
        next(iter(session))
    assert echo.got == []


def test_concurrent_updates_never_exceed_the_inflight_budget(study: Study) -> None:
    echo = Echo(hold_s=0.05)
    vector = np.ones(250_000, np.float32)  # 1 MB each
    limits = TransportLimits(chunk_bytes=64 << 10, inflight_bytes=vector.nbytes)
    srv = CoordinatorServer(
        "127.0.0.1:0",
        echo,
        tls=study.bundles["coordinator"],
        peer_check=study.peer_check,
        limits=limits,
    )
    target = f"127.0.0.1:{srv.start()}"
    try:
        sessions = [
            open_session(target, tls=study.bundles[n], limits=limits)
            for n in ("cleveland", "hungary")
        ]
        for s in sessions:
            for r in range(3):
                s.send(Envelope.create("update", "run-1", r, vector=vector))
        for s in sessions:
            replies = iter(s)
            for _ in range(3):
                next(replies)
            s.close()
    finally:
        srv.stop(0)
    assert len(echo.got) == 6
    assert srv.budget.peak == vector.nbytes  # one update reassembled at a time, never two


def test_insecure_mode_is_loopback_only_and_warns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="only allowed on loopback"):
        CoordinatorServer("0.0.0.0:0", Echo(), tls=None, peer_check=None, insecure=True)
    with pytest.raises(ConfigError, match="only allowed on loopback"):
        open_session("10.1.2.3:50051", tls=None, identity_if_insecure="cleveland")
    with pytest.raises(ConfigError, match="needs its TLS bundle"):
        CoordinatorServer("127.0.0.1:0", Echo(), tls=None, peer_check=None)

    echo = Echo()
    srv = CoordinatorServer("127.0.0.1:0", echo, tls=None, peer_check=None, insecure=True)
    target = f"localhost:{srv.start()}"
    try:
        session = open_session(target, tls=None, identity_if_insecure="cleveland")
        reply = exchange(session, Envelope.create("hello", "run-1", 0))
    finally:
        srv.stop(0)
    assert reply.header == {"sender": "cleveland"}
    assert capsys.readouterr().err.count("WARNING: --insecure") == 2


def test_backoff_grows_exponentially_up_to_a_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, maximum_s=4.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    jittery = Backoff(initial_s=1.0, maximum_s=1.0, jitter=0.2)
    assert all(0.8 <= jittery.next_delay() <= 1.2 for _ in range(100))


def test_byte_budget_waits_for_room_but_lets_one_oversized_request_through() -> None:
    budget = ByteBudget(10)
    budget.acquire(25)  # bigger than the budget, nothing else in flight: allowed
    entered = threading.Event()

    def second() -> None:
        budget.acquire(5)
        entered.set()

    worker = threading.Thread(target=second)
    worker.start()
    assert not entered.wait(0.1)
    budget.release(25)
    assert entered.wait(2)
    worker.join()
    assert budget.in_use == 5 and budget.peak == 25


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="chunk_bytes"):
        TransportLimits(chunk_bytes=10)
    assert TransportLimits(chunk_bytes=1 << 20).max_frame_bytes > 1 << 20


# -- vectors taken chunk by chunk ----------------------------------------------------------


@dataclass
class Piecewise:
    """A sink that keeps a copy of what it is given and can be slow."""

    head: VectorHead
    delay_s: float = 0.0
    on_write: Callable[[int], None] | None = None
    pieces: list[tuple[int, np.ndarray]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    aborted: list[str] = field(default_factory=list)

    def write(self, index: int, values: np.ndarray) -> None:
        if self.on_write is not None:
            self.on_write(index * values.itemsize)
        time.sleep(self.delay_s)
        self.pieces.append((index, values.copy()))

    def close(self) -> None:
        self.done.set()

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)
        self.done.set()

    def vector(self) -> np.ndarray:
        return np.concatenate([values for _, values in self.pieces])


@dataclass
class Sinking(Echo):
    """Takes every vector chunk by chunk; messages without a vector go to ``received``."""

    sinks: list[Piecewise] = field(default_factory=list)
    delay_s: float = 0.0
    on_write: Callable[[int], None] | None = None

    def begin(self, link: Link, head: VectorHead) -> Piecewise:
        self.sinks.append(Piecewise(head, self.delay_s, self.on_write))
        return self.sinks[-1]


def serve(study: Study, handler: Echo, limits: TransportLimits = LIMITS) -> CoordinatorServer:
    return CoordinatorServer(
        "127.0.0.1:0",
        handler,
        tls=study.bundles["coordinator"],
        peer_check=study.peer_check,
        limits=limits,
    )


def raw_channel(study: Study, port: int) -> grpc.Channel:
    bundle = study.bundles["cleveland"]
    creds = grpc.ssl_channel_credentials(bundle.ca_pem, bundle.key_pem, bundle.cert_pem)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=LIMITS.grpc_options(False))


def test_a_handler_with_begin_takes_vectors_chunk_by_chunk_without_reassembling(
    study: Study,
) -> None:
    handler = Sinking()
    srv = serve(study, handler)
    target = f"127.0.0.1:{srv.start()}"
    vector = np.random.default_rng(1).normal(size=300_000).astype(np.float32)  # 19 chunks
    try:
        session = open_session(target, tls=study.bundles["cleveland"], limits=LIMITS)
        session.send(Envelope.create("update", "run-1", 4, {"n": 30}, vector))
        reply = exchange(session, Envelope.create("hello", "run-1", 4))  # no vector: received
        assert handler.sinks[0].done.wait(5)
    finally:
        srv.stop(0)
    (sink,) = handler.sinks
    assert sink.head.envelope.sender == "cleveland"  # from the certificate, as for received
    assert (sink.head.envelope.kind, sink.head.envelope.header) == ("update", {"n": 30})
    assert sink.aborted == [] and len(sink.pieces) == 19
    np.testing.assert_array_equal(sink.vector(), vector)
    assert [e.kind for e in handler.got] == ["hello"] and reply.header == {"sender": "cleveland"}
    assert srv.budget.peak == 0  # nothing was reassembled


def test_a_stream_that_breaks_midway_aborts_the_sink(study: Study) -> None:
    handler = Sinking()
    srv = serve(study, handler)
    port = srv.start()
    env = Envelope.create("update", "run-1", 0, vector=np.ones(100_000, np.float32))
    frames = list(wire_frames(env, LIMITS.chunk_bytes))[:3]  # head + 2 of 7 chunks, then end
    try:
        replies: list[bytes] = []
        with (
            raw_channel(study, port) as channel,
            pytest.raises(grpc.RpcError, match="ended in the middle of a message"),
        ):
            replies.extend(channel.stream_stream(CONNECT)(iter(frames)))  # told why, then cut
        (reply,) = replies
        assert handler.disconnected_event.wait(5)
    finally:
        srv.stop(0)
    (sink,) = handler.sinks
    assert sink.aborted and "ended in the middle of a message" in sink.aborted[0]
    assert len(sink.pieces) == 2
    assert "malformed stream" in handler.gone[0]
    told = FrameAssembler().feed_bytes(reply)
    assert told is not None and "ended in the middle of a message" in told.header["message"]


def test_a_slow_sink_holds_the_sender_back_to_a_few_chunks(study: Study) -> None:
    chunk = LIMITS.chunk_bytes
    vector = np.ones(64 * chunk // 4, np.float32)  # 64 chunks
    produced = [0]  # chunk frames the site has handed to gRPC
    lead: list[int] = []  # at each write: chunks produced but not yet consumed

    def on_write(offset: int) -> None:
        lead.append(produced[0] - offset // chunk)

    def frames() -> Iterator[bytes]:
        for message in wire_frames(Envelope.create("update", "r", 0, vector=vector), chunk):
            yield message
            produced[0] += 1

    handler = Sinking(delay_s=0.01, on_write=on_write)
    srv = serve(study, handler)
    port = srv.start()
    try:
        with raw_channel(study, port) as channel:
            replies = channel.stream_stream(CONNECT)(frames())
            assert handler.disconnected_event.wait(30) or handler.sinks[0].done.is_set()
            replies.cancel()
    finally:
        srv.stop(0)
    (sink,) = handler.sinks
    assert sink.done.is_set() and sink.aborted == []
    assert len(lead) == 64
    # gRPC flow control stops the sender while the sink is busy: it runs a few chunks
    # ahead (window, socket, the frame being written), never the whole vector.
    assert max(lead) <= 12, lead


def test_limits_validate_the_read_ahead() -> None:
    assert TransportLimits(chunk_bytes=1 << 20).read_ahead_bytes == 1 << 20
    assert TransportLimits(lookahead_bytes=1 << 16).read_ahead_bytes == 1 << 16
    with pytest.raises(ConfigError, match="lookahead_bytes"):
        TransportLimits(lookahead_bytes=10)


@dataclass
class Holding(Echo):
    """Keeps each site's link, so a test can end the stream from the coordinator's side."""

    links: list[Link] = field(default_factory=list)

    def connected(self, link: Link) -> None:
        super().connected(link)
        self.links.append(link)


def _reason_when(study: Study, end: Callable[[Holding, CoordinatorServer, object], None]) -> str:
    """Open a stream, say hello, end it with ``end(handler, server, session)``; the reason
    the coordinator's side gives for the disconnect."""
    handler = Holding()
    srv = serve(study, handler)
    target = f"127.0.0.1:{srv.start()}"
    try:
        session = open_session(target, tls=study.bundles["cleveland"], limits=LIMITS)
        session.send(Envelope.create("hello", "run-1", 0))
        next(iter(session))  # the echo: the stream is up
        end(handler, srv, session)
        assert handler.disconnected_event.wait(10)
    finally:
        srv.stop(0)
        session.cancel()
    return handler.gone[0]


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("site closes", "the site closed the stream"),
        (
            "site vanishes",
            "connection lost: the site's stream ended without a goodbye (its agent stopped or "
            "crashed, or the network dropped)",
        ),
        (
            "coordinator closes",
            "the coordinator closed the stream (the run is over or the site reconnected)",
        ),
        ("coordinator stops", "the coordinator is shutting down"),
    ],
)
def test_every_way_a_stream_ends_gives_the_coordinator_a_reason(
    study: Study, how: str, expected: str
) -> None:
    # gRPC reports a cancelled or vanished site as a bare RpcError with no text: the
    # coordinator's log used to read "disconnected: connection lost: ".
    def end(handler: Holding, srv: CoordinatorServer, session: object) -> None:
        if how == "site closes":
            session.close()  # type: ignore[attr-defined]
        elif how == "site vanishes":  # like kill -9: the call is cut, no half-close
            session.cancel()  # type: ignore[attr-defined]
        elif how == "coordinator closes":
            handler.links[0].close()
        else:
            srv.stop(0.5)

    assert _reason_when(study, end) == expected


class _SilentCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call that carries a status code but no details, as gRPC sometimes does."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return ""

    def initial_metadata(self) -> None:
        return None

    def trailing_metadata(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (grpc.StatusCode.CANCELLED, "the stream was cancelled (the coordinator stopped or"),
        (grpc.StatusCode.UNAVAILABLE, "the coordinator is unreachable"),
        (grpc.StatusCode.DATA_LOSS, "gRPC gave no details"),
    ],
)
def test_a_site_names_a_real_reason_when_grpc_gives_no_details(
    code: grpc.StatusCode, meaning: str
) -> None:
    error = _transport_error(_SilentCall(code))
    assert str(error).startswith(f"coordinator connection {code.name}: {meaning}")
    assert error.code == code.name
