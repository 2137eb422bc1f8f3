"""A site that cannot verify its coordinator (or is refused by it) is told which TLS
failure it is, and does not retry one that cannot fix itself."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import fedcare.net.tls as tls_module
from fedcare.net.channel import (
    TLS_FAILED,
    CoordinatorServer,
    Link,
    TransportError,
    TransportLimits,
    open_session,
)
from fedcare.net.tls import TlsBundle, check_peer_certificate, init_study_ca, issue_bundle
from fedcare.net.tls_probe import probe_tls
from fedcare.runtime.envelope import Envelope

LIMITS = TransportLimits(chunk_bytes=64 << 10, keepalive_s=5)


@dataclass(frozen=True)
class Material:
    """TLS material without the checks TlsBundle.load makes (so it can be expired)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def of(cls, folder: Path, ca_pem: bytes | None = None) -> Material:
        ca = ca_pem if ca_pem is not None else (folder / "ca.crt").read_bytes()
        return cls(ca, (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes())


@dataclass
class Pki:
    root: Path
    ca: Path
    other: Path

    def bundle(self, name: str, role: str, ca: Path | None = None, **kw: object) -> Path:
        return issue_bundle(ca or self.ca, name, self.root / f"{name}-{role}", role, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("probe")
    return Pki(root, init_study_ca(root / "ca", "heart"), init_study_ca(root / "other", "else"))


class Quiet:
    joined: list[str]

    def __init__(self) -> None:
        self.joined = []

    def connected(self, link: Link) -> None:
        self.joined.append(link.identity)

    def received(self, link: Link, env: Envelope) -> None:
        link.send(Envelope.create("echo", env.run_id, env.round))

    def disconnected(self, link: Link, reason: str) -> None:
        pass


@pytest.fixture(scope="module")
def site(pki: Pki) -> TlsBundle:
    return TlsBundle.load(pki.bundle("cleveland", "site"))


def coordinator(pki: Pki, material: Material) -> Iterator[tuple[str, Quiet]]:
    ca_pem = (pki.ca / "ca.crt").read_bytes()

    def check(pem: bytes) -> str:
        return check_peer_certificate(pem, ca_pem, set(), role="site")

    handler = Quiet()
    server = CoordinatorServer(
        "127.0.0.1:0", handler, tls=material, peer_check=check, limits=LIMITS
    )
    port = server.start()
    try:
        yield f"127.0.0.1:{port}", handler
    finally:
        server.stop(0)


def failure(target: str, bundle: object, server_name: str | None = None) -> TransportError:
    with pytest.raises(TransportError) as caught:
        open_session(
            target, tls=bundle, limits=LIMITS, server_name=server_name, connect_timeout_s=1.0
        )  # type: ignore[arg-type]
    return caught.value


def test_a_coordinator_certificate_from_another_ca_is_named_and_lasting(
    pki: Pki, site: TlsBundle
) -> None:
    foreign = Material.of(pki.bundle("coordinator", "coordinator", pki.other))
    for target, handler in coordinator(pki, foreign):
        error = failure(target, site)
        assert error.code == TLS_FAILED and error.refused
        assert "certificate at 127.0.0.1" in str(error)
        assert "is not from this site's study CA" in str(error)
        assert handler.joined == []


def test_a_host_name_the_certificate_does_not_cover_is_named(pki: Pki, site: TlsBundle) -> None:
    elsewhere = Material.of(pki.bundle("coord-b", "coordinator", hosts=("coord.example.org",)))
    for target, _ in coordinator(pki, elsewhere):
        error = failure(target, site)
        assert error.refused
        assert "is not valid for '127.0.0.1'" in str(error)
        assert "fedcare certs issue --host" in str(error)


def test_an_expired_coordinator_certificate_is_named(
    pki: Pki, site: TlsBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_years_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3 * 365)
    monkeypatch.setattr(tls_module, "_now", lambda: three_years_ago)
    expired = Material.of(pki.bundle("coord-c", "coordinator", valid_days=1))
    monkeypatch.undo()
    for target, _ in coordinator(pki, expired):
        error = failure(target, site)
        assert error.refused
        assert "has expired" in str(error)


def test_a_site_certificate_the_coordinator_refuses_is_named(pki: Pki) -> None:
    study_coordinator = Material.of(pki.bundle("coord-d", "coordinator"))
    own_ca = (pki.ca / "ca.crt").read_bytes()
    # It trusts the study CA, but its own certificate was issued by another CA.
    stranger = Material.of(pki.bundle("basel", "site", pki.other), ca_pem=own_ca)
    for target, handler in coordinator(pki, study_coordinator):
        error = failure(target, stranger)
        assert error.refused
        assert "refused this site's certificate" in str(error)
        assert handler.joined == []


def test_a_coordinator_that_is_down_is_worth_retrying(pki: Pki, site: TlsBundle) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    error = failure(f"127.0.0.1:{port}", site)
    assert error.code == "UNAVAILABLE" and not error.refused
    assert "connection refused" in str(error)


def test_a_coordinator_without_tls_is_named(pki: Pki, site: TlsBundle) -> None:
    handler = Quiet()
    server = CoordinatorServer("127.0.0.1:0", handler, tls=None, peer_check=None, insecure=True)
    port = server.start()
    try:
        found = probe_tls("127.0.0.1", port, site)
    finally:
        server.stop(0)
    assert found.lasting
    assert "does not speak TLS" in found.text


def test_a_working_coordinator_probes_clean(pki: Pki, site: TlsBundle) -> None:
    for target, _ in coordinator(pki, Material.of(pki.bundle("coord-e", "coordinator"))):
        host, port = target.split(":")
        found = probe_tls(host, int(port), site)
        assert not found.lasting and "TLS with" in found.text
