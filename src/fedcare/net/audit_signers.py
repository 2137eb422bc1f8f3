"""``audit-signers.pem``: the certificates that sign a study's audit log, kept beside it.

The coordinator writes its certificate and the study CA's certificate next to
``audit.log`` when it starts a run, so ``fedcare audit verify studies/NAME/audit.log``
works with nothing else: each signer's Ed25519 key is taken from its certificate, and a
certificate counts only if the CA certificate in the same file issued it. That proves the
chain and signatures are intact and which certificate signed them; it does not prove the
CA is the study's (someone able to rewrite the folder could replace both), so the
verifier prints the CA's fingerprint to compare, and ``--ca-dir`` checks against the CA
folder itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.net.tls import TlsBundle, identity_of, signing_key_of, study_of

SIGNERS_FILE = "audit-signers.pem"
_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def _pem_blocks(data: bytes) -> list[bytes]:
    return [_BEGIN + part.split(_END)[0] + _END + b"\n" for part in data.split(_BEGIN)[1:]]


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, as ``AB:CD:...`` (what ``openssl x509
    -fingerprint -sha256`` prints)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def record_signer(folder: Path, bundle: TlsBundle) -> Path:
    """Add ``bundle``'s certificate and its CA's to ``folder/audit-signers.pem`` (once)."""
    path = Path(folder) / SIGNERS_FILE
    known = _pem_blocks(path.read_bytes()) if path.is_file() else []
    fresh = [
        pem for pem in (bundle.ca_pem, bundle.cert_pem) if _normal(pem) not in map(_normal, known)
    ]
    if fresh:
        with path.open("ab") as fh:
            for pem in fresh:
                fh.write(_normal(pem))
    return path


def _normal(pem: bytes) -> bytes:
    return pem.strip() + b"\n"


@dataclass
class Signers:
    """Signing keys by author from a signers file, and the CAs that vouch for them."""

    path: Path
    keys: dict[str, list[Ed25519PublicKey]] = field(default_factory=dict)
    cas: dict[str, str] = field(default_factory=dict)  # study name -> CA fingerprint

    def describe(self) -> str:
        cas = "; ".join(f"study CA '{study}' SHA-256 {fp}" for study, fp in self.cas.items())
        return (
            f"signers {', '.join(sorted(self.keys))} from {self.path} ({cas}); compare the "
            "fingerprint with your CA's, or pass --ca-dir to check against the CA folder"
        )


def signers_beside(log: Path) -> Signers | None:
    """The signers file next to ``log``, checked; None when there is none."""
    path = Path(log).parent / SIGNERS_FILE
    if not path.is_file():
        return None
    blocks = [x509.load_pem_x509_certificate(pem) for pem in _pem_blocks(path.read_bytes())]
    cas = [c for c in blocks if _is_ca(c)]
    signers = Signers(path)
    for cert in blocks:
        if _is_ca(cert):
            continue
        pem = cert.public_bytes(serialization.Encoding.PEM)
        issuer = next((ca for ca in cas if _issued_by(cert, ca)), None)
        if issuer is None:
            raise ConfigError(
                f"{path}: the certificate of {identity_of(pem)!r} was not issued by a CA "
                "certificate in this file; pass --ca-dir (the study CA folder) instead"
            )
        ca_pem = issuer.public_bytes(serialization.Encoding.PEM)
        try:
            key = signing_key_of(pem)
        except ProtocolError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        signers.keys.setdefault(identity_of(pem), []).append(key)
        signers.cas[study_of(ca_pem)] = fingerprint(ca_pem)
    if not signers.keys:
        raise ConfigError(f"{path} holds no signer's certificate; pass --ca-dir instead")
    return signers


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another issuer, or a forged signature
        return False
    return True
