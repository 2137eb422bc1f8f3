"""A site's own record of every release it sent in query jobs, and its cross-check.

Before a release leaves, the site appends one signed, hash-chained entry to its state
folder's ``query-releases.log`` and fsyncs it (an :class:`AuditLog`, so ``fedcare audit
verify`` checks it): the run, the question's number, analysis and step, the SHA-256 of
the released values (:func:`values_digest`; the numbers themselves stay at the site),
what was withheld and the epsilon that answer charged to the site's ledger. The
coordinator's ``audit.log`` records the digest of every release it received, so
:func:`compare_releases` shows a coordinator log that hides a release, invents one, or
holds values other than those the site sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.core.errors import ConfigError
from fedcare.runtime.audit import AuditEntry, AuditLog, AuditProblem

RELEASE_LOG = "query-releases.log"
SENT = "query_release_sent"  # the site's entry kind
RECEIVED = "query_release"  # the coordinator's entry kind for the same release


class SiteReleaseLog:
    """``path``: the site's release log, signed by ``site`` with ``signing_key``."""

    def __init__(self, path: Path, site: str, signing_key: Ed25519PrivateKey) -> None:
        self.log = AuditLog(path)
        self.site = site
        self.key = signing_key

    def record(self, run_id: str, detail: dict[str, Any]) -> AuditEntry:
        """Append one release (a site machine's ``released`` event) and fsync it."""
        body = {
            "run_id": run_id,
            "site": self.site,
            "question": detail["question"],
            "analysis": detail["analysis"],
            "step": detail["step"],
            "values_sha256": detail["values_sha256"],
            "suppressed": list(detail["suppressed"]),
            "epsilon": detail["epsilon"],
            "secure": detail.get("secure", "none"),
        }
        return self.log.append(SENT, self.site, body, self.key)


def local_signing_key(path: Path) -> Ed25519PrivateKey:
    """A site without a bundle (``--insecure`` on loopback) signs its release log with a key
    kept at ``path``, made on first use (owner-only), so its later entries verify alike."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: expected an Ed25519 private key (PEM), found another kind")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return key


def is_release_log(path: Path) -> bool:
    """Whether ``path`` is a site's query release log (not a copy of coordinator entries)."""
    entries = AuditLog(path).entries()
    return bool(entries) and all(e.kind == SENT for e in entries)


def _key(entry: AuditEntry) -> tuple[str, int, str, str]:
    b = entry.body
    return (
        str(b.get("run_id")),
        int(b.get("question", -1)),
        str(b.get("analysis")),
        str(b.get("step")),
    )


def _where(key: tuple[str, int, str, str]) -> str:
    run, question, analysis, step = key
    return f"run '{run}' question {question} ({analysis}/{step})"


MASKED = "masked"  # a release the coordinator received inside a secure sum: no digest


def _by_question(entries: Iterable[AuditEntry]) -> dict[tuple[str, int, str, str], set[str]]:
    found: dict[tuple[str, int, str, str], set[str]] = {}
    for entry in entries:
        digest = entry.body.get("values_sha256")
        masked = digest is None and entry.body.get("secure", "none") != "none"
        found.setdefault(_key(entry), set()).add(MASKED if masked else str(digest))
    return found


def compare_releases(coordinator_log: Path, site_log: Path, site: str) -> list[AuditProblem]:
    """Where ``coordinator_log`` and ``site``'s release log disagree about its releases.

    Every release the coordinator recorded from ``site`` must be one the site sent (same
    question, same values digest), and every question the site answered must have a
    release from it in the coordinator's log with one of the digests the site sent (a
    question asked again after a coordinator restart is answered again: any of them). A
    release made inside a secure sum reached the coordinator masked, so it has no digest
    there: it matches a release the site sent for the same question.
    """
    sent = _by_question(e for e in AuditLog(site_log).entries() if e.kind == SENT)
    received = _by_question(
        e
        for e in AuditLog(coordinator_log).entries()
        if e.kind == RECEIVED and e.body.get("site") == site
    )
    problems: list[AuditProblem] = []
    for key, digests in sorted(received.items()):
        if MASKED in digests and key in sent:
            digests = digests - {MASKED} | sent[key]
        for digest in sorted(digests - sent.get(key, set())):
            problems.append(
                AuditProblem(
                    "differs",
                    None,
                    None,
                    f"{_where(key)}: the coordinator's log records a release from site "
                    f"'{site}' with values {digest[:16]} that the site's release log "
                    f"{site_log} does not hold ({_digests(sent.get(key))})",
                )
            )
    for key, digests in sorted(sent.items()):
        if not digests & received.get(key, set()) and MASKED not in received.get(key, set()):
            problems.append(
                AuditProblem(
                    "missing",
                    None,
                    None,
                    f"{_where(key)}: site '{site}' sent values {_digests(digests)}, but the "
                    f"coordinator's log {coordinator_log} has no such release from it",
                )
            )
    return problems


def _digests(digests: set[str] | None) -> str:
    if not digests:
        return "none sent"
    return ", ".join(d[:16] for d in sorted(digests))
