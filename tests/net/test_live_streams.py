"""One live stream per site identity: a second agent with the same bundle is refused while
the first is live (both are told), and a first stream that died is found by keep-alive so
it cannot lock its site out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedcare.net.channel import (
    NOTICE_KIND,
    CoordinatorServer,
    Link,
    TransportError,
    TransportLimits,
    notice_text,
    open_session,
)
from fedcare.net.live_streams import LiveStreams
from fedcare.net.tls import TlsBundle, check_peer_certificate, init_study_ca, issue_bundle
from fedcare.runtime.envelope import Envelope

# Keep-alive every second, dead after one more: a frozen connection is found quickly.
FAST = TransportLimits(chunk_bytes=64 << 10, keepalive_s=1.0, keepalive_timeout_s=1.0)


@dataclass
class Stream:
    identity: str
    alive: bool = True

    @property
    def live(self) -> bool:
        return self.alive


def test_the_first_live_stream_keeps_its_identity_until_it_is_not_live() -> None:
    streams = LiveStreams()
    first, second = Stream("va"), Stream("va")
    assert streams.claim(first) is None
    assert streams.claim(second) is first  # refused: the first is live
    assert streams.claim(Stream("cleveland")) is None  # other identities are independent
    first.alive = False  # its call ended, or keep-alive found it dead
    assert streams.claim(second) is None
    streams.release(first)  # the late end of the old call does not free the new holder
    assert streams.holder("va") is second
    streams.release(second)
    assert streams.holder("va") is None


@dataclass
class Recorder:
    joined: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    left: threading.Event = field(default_factory=threading.Event)

    def connected(self, link: Link) -> None:
        self.joined.append(link.identity)

    def received(self, link: Link, env: Envelope) -> None:
        link.send(Envelope.create("echo", env.run_id, env.round, {"sender": env.sender}))

    def disconnected(self, link: Link, reason: str) -> None:
        self.gone.append(reason)
        self.left.set()

    def duplicate_refused(self, first: Link, peer: str, reason: str) -> None:
        self.duplicates.append((first.identity, peer, reason))


@dataclass
class Pki:
    coordinator: TlsBundle
    sites: dict[str, TlsBundle]

    def check(self, pem: bytes) -> str:
        return check_peer_certificate(pem, self.coordinator.ca_pem, set(), role="site")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root: Path = tmp_path_factory.mktemp("live")
    ca = init_study_ca(root / "ca", "heart")
    coordinator = TlsBundle.load(issue_bundle(ca, "coordinator", root / "c", "coordinator"))
    return Pki(coordinator, {"va": TlsBundle.load(issue_bundle(ca, "va", root / "va", "site"))})


@pytest.fixture
def served(pki: Pki) -> Iterator[tuple[str, Recorder]]:
    handler = Recorder()
    server = CoordinatorServer(
        "127.0.0.1:0", handler, tls=pki.coordinator, peer_check=pki.check, limits=FAST
    )
    port = server.start()
    yield f"127.0.0.1:{port}", handler
    server.stop(0)


def hello(session: object) -> Envelope:
    session.send(Envelope.create("hello", "run-1", 0))  # type: ignore[attr-defined]
    return next(iter(session))  # type: ignore[call-overload,no-any-return]


def test_a_second_agent_of_a_live_site_is_refused_and_both_are_told(
    pki: Pki, served: tuple[str, Recorder]
) -> None:
    target, handler = served
    first = open_session(target, tls=pki.sites["va"], limits=FAST)
    assert hello(first).header == {"sender": "va"}
    second = open_session(target, tls=pki.sites["va"], limits=FAST)
    with pytest.raises(TransportError) as refused:
        next(iter(second))
    text = str(refused.value)
    assert refused.value.code == "ALREADY_EXISTS" and not refused.value.refused  # it may wait
    assert "site 'va' is already connected from 127.0.0.1:" in text
    assert " UTC; stop the other agent or wait" in text
    # The first agent hears about it, and its stream goes on as before.
    first.send(Envelope.create("hello", "run-1", 1))
    replies = iter(first)
    notice = next(replies)
    assert notice.kind == NOTICE_KIND
    assert "another agent with this site's identity ('va') connected from" in notice_text(notice)
    assert next(replies).header == {"sender": "va"}
    assert handler.joined == ["va"]  # the second never reached the coordinator's handler
    ((site, _, reason),) = handler.duplicates
    assert site == "va" and reason in text
    first.close()
    second.cancel()


class FreezableProxy:
    """A loopback TCP relay that can stop moving bytes while keeping its sockets open:
    a peer that vanished without closing (a cut cable, a frozen VM)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.05)  # hold the bytes: nothing reaches the other side
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.listener, *self.sockets]:
            s.close()


def test_a_dead_first_stream_does_not_lock_its_site_out(
    pki: Pki, served: tuple[str, Recorder]
) -> None:
    target, handler = served
    proxy = FreezableProxy(int(target.rsplit(":", 1)[1]))
    first = open_session(f"127.0.0.1:{proxy.port}", tls=pki.sites["va"], limits=FAST)
    server_name_ok = hello(first)
    assert server_name_ok.header == {"sender": "va"}
    proxy.frozen.set()  # the first agent's connection goes silent, nothing closes it
    # Keep-alive pings go unanswered, so the coordinator drops the dead stream; until
    # then a second agent is told to wait. It gets in without anyone stopping the first.
    admitted, waits = None, []
    for _ in range(100):
        second = open_session(target, tls=pki.sites["va"], limits=FAST)
        try:
            admitted = hello(second)
            break
        except TransportError as exc:
            waits.append(exc.code)
            second.cancel()
            time.sleep(0.2)
    assert set(waits) <= {"ALREADY_EXISTS"}
    assert admitted is not None and admitted.header == {"sender": "va"}
    assert handler.left.wait(10)
    assert handler.gone[0].startswith("connection lost")
    assert handler.joined == ["va", "va"]
    second.close()
    first.cancel()
    proxy.close()
