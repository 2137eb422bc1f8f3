"""Name a TLS failure that gRPC reports only as "could not connect".

When a site cannot reach its coordinator, gRPC says nothing about why: a coordinator that
is down and one whose certificate the site cannot verify look the same, and an agent used
to retry forever either way. Once a connection fails, :func:`probe_tls` makes one direct
TLS connection with Python's ``ssl`` module and the same bundle, and says what happened:
an unknown CA, a host name the certificate does not cover, an expired certificate, a
coordinator that refused this site's certificate, or no TLS at all. Those cannot fix
themselves (``lasting``), so the agent stops with that message instead of retrying; a
refused or timed-out TCP connection is a coordinator that may come back (not lasting).
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # channel imports this module lazily; only the type is needed
    from fedcare.net.channel import TlsMaterial

# OpenSSL X509_V_ERR_* codes a site can act on.
_EXPIRED = 10
_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}  # no issuer / self-signed / unable to get local issuer


@dataclass(frozen=True)
class TlsDiagnosis:
    """What the probe found: a sentence for the site's terminal, and whether retrying can
    help (``lasting``: it cannot, someone has to change a certificate or an address)."""

    text: str
    lasting: bool


def probe_tls(
    host: str, port: int, tls: TlsMaterial, server_name: str | None = None, timeout_s: float = 5.0
) -> TlsDiagnosis:
    """Connect to ``host:port`` with ``tls`` as a site would, and say how it went."""
    name = server_name or host.strip("[]")
    where = f"{host}:{port}"
    try:
        context = _client_context(tls)
    except ssl.SSLError as exc:
        return TlsDiagnosis(f"this site's bundle cannot be used for TLS: {exc}", True)
    try:
        raw = socket.create_connection((host.strip("[]"), port), timeout=timeout_s)
    except ConnectionRefusedError:
        return TlsDiagnosis(
            f"nothing listens at {where} (connection refused): the coordinator is not "
            "running there (yet), or the address is wrong",
            False,
        )
    except OSError as exc:
        return TlsDiagnosis(f"cannot open a connection to {where}: {_os_text(exc)}", False)
    try:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            return _after_handshake(conn, where)
    except ssl.SSLCertVerificationError as exc:
        return _unverified(exc, where, name)
    except ssl.SSLError as exc:
        return _alert(exc, where)
    except OSError as exc:
        return TlsDiagnosis(f"the TLS handshake with {where} failed: {_os_text(exc)}", False)
    finally:
        raw.close()


def _client_context(tls: TlsMaterial) -> ssl.SSLContext:
    """A verifying client context holding the site's key pair (ssl reads them from files:
    a private folder that exists for the duration of the call)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=tls.ca_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="fedcare-probe-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert.write_bytes(tls.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(tls.key_pem)
        context.load_cert_chain(str(cert), str(key))
    return context


def _after_handshake(conn: ssl.SSLSocket, where: str) -> TlsDiagnosis:
    """Under TLS 1.3 the server checks the site's certificate after the client finished
    its handshake: its verdict is the first thing read (an alert, or HTTP/2 settings)."""
    conn.settimeout(2.0)
    try:
        first = conn.recv(1)
    except ssl.SSLError as exc:
        return _alert(exc, where)
    except OSError:
        first = b"?"  # no verdict in time: nothing says it refused
    if not first:  # closed without a word (gRPC's TLS sends no alert for this)
        return TlsDiagnosis(
            f"the coordinator at {where} closed the connection right after the TLS handshake: "
            "it refused this site's certificate (not from the coordinator's study CA, "
            "expired or revoked)",
            True,
        )
    return TlsDiagnosis(
        f"TLS with {where} works (the coordinator's certificate verifies and it accepts "
        "this site's); the coordinator did not answer in time",
        False,
    )


def _unverified(exc: ssl.SSLCertVerificationError, where: str, name: str) -> TlsDiagnosis:
    code, message = exc.verify_code, exc.verify_message
    if code == _EXPIRED:
        text = (
            f"the coordinator's certificate at {where} has expired ({message}); the "
            "coordinator needs a new one from the study CA"
        )
    elif code == _NOT_YET_VALID:
        text = (
            f"the coordinator's certificate at {where} is not valid yet ({message}); check "
            "both machines' clocks"
        )
    elif code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        text = (
            f"the coordinator's certificate at {where} is not valid for '{name}' ({message}); "
            "connect with the host name it was issued for (fedcare certs issue --host), or "
            "issue it for this name"
        )
    elif code in _UNKNOWN_ISSUER:
        text = (
            f"the coordinator's certificate at {where} is not from this site's study CA "
            f"({message}): is this the right coordinator, and is this bundle from its study?"
        )
    else:
        text = f"the coordinator's certificate at {where} failed verification: {message}"
    return TlsDiagnosis(text, True)


def _alert(exc: ssl.SSLError, where: str) -> TlsDiagnosis:
    """A TLS alert or protocol error: what the coordinator said about this site."""
    reason = (exc.reason or str(exc)).lower()
    if "wrong_version_number" in reason or "wrong version number" in reason:
        return TlsDiagnosis(
            f"{where} does not speak TLS (a coordinator started with --insecure?)", True
        )
    if "expired" in reason:
        return TlsDiagnosis(
            f"the coordinator at {where} refused this site's certificate: it has expired "
            f"(TLS alert: {exc.reason}); ask the study for a new bundle",
            True,
        )
    if "revoked" in reason:
        return TlsDiagnosis(
            f"the coordinator at {where} refused this site's certificate: it was revoked "
            f"(TLS alert: {exc.reason})",
            True,
        )
    if any(
        word in reason
        for word in (
            "unknown_ca",
            "unknown ca",
            "bad_certificate",
            "bad certificate",
            "certificate_required",
            "certificate required",
            "unsupported_certificate",
            "decrypt",
        )
    ):
        return TlsDiagnosis(
            f"the coordinator at {where} refused this site's certificate (TLS alert: "
            f"{exc.reason}): this bundle is not from the coordinator's study CA",
            True,
        )
    return TlsDiagnosis(f"the TLS handshake with {where} failed: {exc.reason or exc}", False)


def _os_text(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    return exc.strerror or str(exc) or type(exc).__name__
