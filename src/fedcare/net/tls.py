"""The study's certificate authority and the key bundles handed to each party.

The coordinating centre creates one certificate authority per study (``init_study_ca``) and
issues a bundle per hospital and one for the coordinator (``issue_bundle``). A bundle holds
the CA certificate, the party's TLS certificate and key for mutual TLS, and an Ed25519 key
that signs its audit-log entries. The Ed25519 public key is also embedded in the TLS
certificate, so whoever authenticates a peer learns its audit key from the same source.

A peer's identity is the common name of its certificate (``identity_of``), never a field it
sends. ``check_peer_certificate`` is what a server runs on every connection on top of the TLS
handshake: signed by this study's CA, within its validity, not revoked, and of the expected
role. Revocation is a JSON list of serial numbers next to the CA (``revoked.json``).

Keys use ECDSA P-256 for TLS (supported by every gRPC build) and Ed25519 for audit
signatures; private key files are created 0600 and refused when readable by others.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.data.json_file import read_json

Role = Literal["site", "coordinator"]
ROLES: tuple[str, ...] = get_args(Role)

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
REVOKED = "revoked.json"
ISSUED = "issued.json"
BUNDLE_FILES = ("ca.crt", "cert.pem", "key.pem", "signing.key", "signing.pub", "bundle.json")

# Private OID arc derived from a UUID (ITU-T X.667, arc 2.25): no registration needed.
SIGNING_KEY_OID = x509.ObjectIdentifier("2.25.260688004466341012470155396263893624131")

# Site names become certificate names, site ids in the run store and folder names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_ROLE_USAGE = {
    "site": ExtendedKeyUsageOID.CLIENT_AUTH,
    "coordinator": ExtendedKeyUsageOID.SERVER_AUTH,
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_name(name: str, what: str = "name") -> str:
    """Refuse names that could not safely be a certificate name, a site id and a folder."""
    if not _NAME.match(name):
        raise ConfigError(
            f"{what} {name!r} is not allowed: expected 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise ConfigError(f"certificate role must be one of {list(ROLES)}, found {role!r}")
    return cast(Role, role)


# -- files -------------------------------------------------------------------------------


def _write_secret(path: Path, data: bytes) -> None:
    """Create a private file readable by its owner only; never overwrite one silently."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only narrow the mode; make it exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    """Write a public file atomically (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json(path: Path, obj: Any) -> None:
    _write_public(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_secret(path: Path) -> bytes:
    """Read a private key file, refusing one that group or others can read."""
    if not path.is_file():
        raise ConfigError(f"key file '{path}' is missing")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"key file '{path}' is readable by others (mode {mode:o}, expected 600); "
            f"run: chmod 600 '{path}'"
        )
    return path.read_bytes()


def _read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' is missing")
    return path.read_bytes()


# -- certificates ------------------------------------------------------------------------


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not a PEM X.509 certificate: {exc}") from exc


def valid_until(cert_pem: bytes) -> dt.datetime:
    """The end of a certificate's validity (UTC)."""
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


def still_valid(until: dt.datetime) -> bool:
    """Whether a certificate valid until ``until`` is still valid now (this module's clock)."""
    return _now() <= until


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(cert_pem: bytes) -> str:
    """The party a certificate names (its single common name)."""
    cert = _load_cert(cert_pem, "peer certificate")
    name = _single_attribute(cert, NameOID.COMMON_NAME)
    if name is None or not _NAME.match(name):
        raise ProtocolError(
            f"peer certificate must carry exactly one valid common name, found {cert.subject.rfc4514_string()!r}"
        )
    return name


def role_of(cert_pem: bytes) -> str:
    """The role (site or coordinator) a certificate was issued for."""
    unit = _single_attribute(
        _load_cert(cert_pem, "peer certificate"), NameOID.ORGANIZATIONAL_UNIT_NAME
    )
    return unit or ""


def study_of(cert_pem: bytes) -> str:
    """The study a certificate (or the study CA certificate) belongs to."""
    org = _single_attribute(_load_cert(cert_pem, "certificate"), NameOID.ORGANIZATION_NAME)
    return org or ""


def signing_key_of(cert_pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 audit-signing key embedded in a party's TLS certificate."""
    cert = _load_cert(cert_pem, "peer certificate")
    try:
        ext = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    except x509.ExtensionNotFound:
        raise ProtocolError(
            f"certificate of {identity_of(cert_pem)!r} carries no audit signing key"
        ) from None
    raw = cast(x509.UnrecognizedExtension, ext).value
    if len(raw) != 34 or raw[:2] != b"\x04\x20":  # DER OCTET STRING of 32 bytes
        raise ProtocolError(f"certificate of {identity_of(cert_pem)!r} has a malformed signing key")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


def check_peer_certificate(
    cert_pem: bytes,
    ca_pem: bytes,
    revoked: set[int],
    *,
    role: Role | None = "site",
    now: dt.datetime | None = None,
) -> str:
    """Accept a peer's certificate only if this study's CA issued it, it is valid now,
    not revoked and of ``role`` (None: any role). Returns the peer's identity."""
    cert = _load_cert(cert_pem, "peer certificate")
    ca = _load_cert(ca_pem, "study CA certificate")
    subject = cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ProtocolError(
            f"certificate {subject!r} was not issued by this study's CA "
            f"({ca.subject.rfc4514_string()!r}); refusing the connection"
        ) from None
    at = now or _now()
    if at < cert.not_valid_before_utc or at > cert.not_valid_after_utc:
        raise ProtocolError(
            f"certificate {subject!r} is not valid at {at:%Y-%m-%d %H:%M} UTC "
            f"(valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}); ask the coordinating centre for a new bundle"
        )
    if cert.serial_number in revoked:
        raise ProtocolError(
            f"certificate {subject!r} (serial {cert.serial_number:x}) has been revoked"
        )
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise ProtocolError(f"certificate {subject!r} is a CA certificate, not a party's")
    except x509.ExtensionNotFound:
        pass
    name = identity_of(cert_pem)
    if role is not None:
        found = role_of(cert_pem)
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if found != role or _ROLE_USAGE[role] not in usages:
            raise ProtocolError(
                f"certificate of {name!r} is for role {found or 'none'!r}, expected {role!r}"
            )
    return name


def _name(study: str, common_name: str, role: str | None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, study),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if role is not None:
        attrs.insert(1, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attrs)


def init_study_ca(ca_dir: Path, study: str, *, valid_days: int = 3650) -> Path:
    """Create the study CA in ``ca_dir`` (ca.key 0600, ca.crt, revoked.json, issued.json).

    Returns ``ca_dir``. Refuses to replace an existing CA key.
    """
    check_name(study, "study name")
    ca_dir = Path(ca_dir)
    ca_dir.mkdir(parents=True, exist_ok=True)
    if (ca_dir / CA_KEY).exists():
        raise ConfigError(
            f"a study CA already exists in '{ca_dir}' ({CA_KEY}); refusing to replace its key"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(study, f"fedcare study CA {study}", None)
    start = _now() - _CLOCK_SKEW
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_secret(ca_dir / CA_KEY, _private_pem(key))
    _write_public(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_json(ca_dir / REVOKED, {"study": study, "revoked": []})
    _write_json(ca_dir / ISSUED, {"study": study, "certificates": []})
    return ca_dir


def _private_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    cert = _load_cert(_read_file(ca_dir / CA_CERT, "study CA certificate"), f"'{ca_dir / CA_CERT}'")
    key = serialization.load_pem_private_key(_read_secret(ca_dir / CA_KEY), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"'{ca_dir / CA_KEY}' is not an EC private key")
    return cert, key, study_of(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_bundle(
    ca_dir: Path,
    name: str,
    out_dir: Path,
    role: Role,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    valid_days: int = 730,
) -> Path:
    """Issue a key + certificate bundle for ``name`` into ``out_dir`` and return it.

    The bundle holds ca.crt, cert.pem, key.pem (0600), signing.key (0600), signing.pub and
    bundle.json. ``hosts`` are the names a coordinator is reached at (its certificate's
    subject alternative names); a site's certificate is a client certificate and has none.
    """
    check_name(name, "certificate name")
    role = _check_role(role)
    if valid_days < 1:
        raise ConfigError(f"valid_days must be >= 1, found {valid_days}")
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key, study = _load_ca(ca_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"bundle folder '{out_dir}' already exists and is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)

    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing = Ed25519PrivateKey.generate()
    signing_raw = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    start = _now() - _CLOCK_SKEW
    end = min(start + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(study, name, role))
        .issuer_name(ca_cert.subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([_ROLE_USAGE[role]]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(tls_key.public_key()), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(SIGNING_KEY_OID, b"\x04\x20" + signing_raw), critical=False
        )
    )
    if role == "coordinator":
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())

    _write_public(out_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(out_dir / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write_secret(out_dir / "key.pem", _private_pem(tls_key))
    _write_secret(out_dir / "signing.key", _private_pem(signing))
    _write_public(
        out_dir / "signing.pub",
        signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    _write_json(out_dir / "bundle.json", {"name": name, "role": role, "study": study})

    issued = _read_json(ca_dir / ISSUED, {"study": study, "certificates": []})
    issued["certificates"].append(
        {
            "name": name,
            "role": role,
            "serial": f"{cert.serial_number:x}",
            "not_after": cert.not_valid_after_utc.isoformat(),
            "signing_pub": signing_raw.hex(),
            "issued_at": _now().isoformat(),
        }
    )
    _write_json(ca_dir / ISSUED, issued)
    return out_dir


MAX_CA_FILE_BYTES = 64 << 20  # issued.json / revoked.json / bundle.json: far below this


def _read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """A CA or bundle file, bounded in size and depth like every file fedcare reads."""
    if not path.exists():
        return default
    data = read_json(path, "certificate file", MAX_CA_FILE_BYTES)
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a JSON object, found {type(data).__name__}")
    return data


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate the study CA issued, as recorded in issued.json."""

    name: str
    role: str
    serial: int
    not_after: dt.datetime
    signing_key: Ed25519PublicKey
    revoked: bool


def issued(ca_dir: Path) -> list[IssuedCertificate]:
    """Every certificate this CA issued, oldest first, with its revocation status."""
    ca_dir = Path(ca_dir)
    revoked = load_revoked(ca_dir)
    return [
        IssuedCertificate(
            name=row["name"],
            role=row["role"],
            serial=int(row["serial"], 16),
            not_after=dt.datetime.fromisoformat(row["not_after"]),
            signing_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(row["signing_pub"])),
            revoked=int(row["serial"], 16) in revoked,
        )
        for row in _read_json(ca_dir / ISSUED, {"certificates": []})["certificates"]
    ]


def signing_keys(ca_dir: Path) -> dict[str, list[Ed25519PublicKey]]:
    """Audit signing keys by party, including those of revoked certificates: entries they
    signed before revocation must still verify."""
    keys: dict[str, list[Ed25519PublicKey]] = {}
    for cert in issued(ca_dir):
        keys.setdefault(cert.name, []).append(cert.signing_key)
    return keys


def revoke(ca_dir: Path, name: str) -> list[int]:
    """Revoke every certificate issued to ``name``; returns the serials newly revoked."""
    ca_dir = Path(ca_dir)
    _load_ca(ca_dir)  # only the CA holder revokes
    mine = [c for c in issued(ca_dir) if c.name == name]
    if not mine:
        raise ConfigError(f"no certificate was issued to {name!r} by the CA in '{ca_dir}'")
    data = _read_json(ca_dir / REVOKED, {"revoked": []})
    already = {int(row["serial"], 16) for row in data["revoked"]}
    fresh = [c.serial for c in mine if c.serial not in already]
    for serial in fresh:
        data["revoked"].append({"name": name, "serial": f"{serial:x}", "time": _now().isoformat()})
    _write_json(ca_dir / REVOKED, data)
    return fresh


def load_revoked(path: Path) -> set[int]:
    """Revoked serial numbers from a CA folder or a revoked.json file (none if absent)."""
    path = Path(path)
    file = path / REVOKED if path.is_dir() else path
    data = _read_json(file, {"revoked": []})
    try:
        return {int(row["serial"], 16) for row in data["revoked"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"'{file}' has a malformed revocation entry: {exc}") from exc


# -- bundles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsBundle:
    """What one party needs to connect: its identity, TLS material and audit signing key."""

    name: str
    role: Role
    study: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    signing_key: Path

    @classmethod
    def load(cls, bundle_dir: Path) -> TlsBundle:
        """Load and check a bundle: files present, keys private, certificate from the CA,
        matching its key and naming the bundle's party."""
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise ConfigError(f"bundle folder '{bundle_dir}' does not exist")
        meta = _read_json(bundle_dir / "bundle.json", {})
        ca_pem = _read_file(bundle_dir / "ca.crt", "bundle CA certificate")
        cert_pem = _read_file(bundle_dir / "cert.pem", "bundle certificate")
        key_pem = _read_secret(bundle_dir / "key.pem")
        _read_secret(bundle_dir / "signing.key")
        name = identity_of(cert_pem)
        role = _check_role(role_of(cert_pem))
        if meta and (meta.get("name"), meta.get("role")) != (name, role):
            raise ConfigError(
                f"bundle '{bundle_dir}': bundle.json says {meta.get('name')!r}/{meta.get('role')!r} "
                f"but cert.pem is for {name!r}/{role!r}"
            )
        try:
            check_peer_certificate(cert_pem, ca_pem, set(), role=role)
        except ProtocolError as exc:
            raise ConfigError(f"bundle '{bundle_dir}': {exc}") from exc
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = _load_cert(cert_pem, "bundle certificate")
        if key.public_key() != cert.public_key():
            raise ConfigError(f"bundle '{bundle_dir}': key.pem does not belong to cert.pem")
        bundle = cls(
            name=name,
            role=role,
            study=study_of(cert_pem),
            ca_pem=ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            signing_key=bundle_dir / "signing.key",
        )
        if bundle.signing_public_key() != signing_key_of(cert_pem):
            raise ConfigError(
                f"bundle '{bundle_dir}': signing.key does not match the key in cert.pem"
            )
        return bundle

    def signing_private_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key this party signs its audit entries with."""
        key = serialization.load_pem_private_key(_read_secret(self.signing_key), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"'{self.signing_key}' is not an Ed25519 private key")
        return key

    def signing_public_key(self) -> Ed25519PublicKey:
        return self.signing_private_key().public_key()
