"""``fedcare audit``: check and read an audit log (the coordinator's, or a site's copy).

    fedcare audit verify studies/heart/audit.log            # signers kept beside the log
    fedcare audit verify studies/heart/audit.log --ca-dir ca
    fedcare audit verify site-audit.log --copy va --key coordinator=coordinator.pem \\
        --against studies/heart/audit.log
    fedcare audit show studies/heart/audit.log --site va --last 20

``verify`` exits 0 when the log is intact, 1 when it found tampering (each problem named
by entry index), 2 on a usage error. A coordinator's log in a study folder is also checked
against the folder's ``runs.db``: entries cut from the end of the log, and runs, rounds
and counted updates the store recorded without their audit entry, are named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape
from rich.table import Table

from fedcare.cli.certs import console
from fedcare.cli.errors import user_errors
from fedcare.core.errors import ConfigError

if TYPE_CHECKING:
    from fedcare.runtime.audit import AuditProblem

app = typer.Typer(help="Verify and read hash-chained, signed audit logs.", no_args_is_help=True)


def _public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 key from a signing.pub file or from a party's certificate."""
    from fedcare.net.tls import signing_key_of

    if not path.is_file():
        raise ConfigError(f"key file '{path}' does not exist")
    data = path.read_bytes()
    if b"BEGIN CERTIFICATE" in data:
        return signing_key_of(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"'{path}' is neither a PEM public key nor a certificate: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"'{path}' is not an Ed25519 public key")
    return key


def collect_keys(
    ca_dir: Path | None, keys: list[str], bundles: list[Path]
) -> dict[str, list[Ed25519PublicKey]]:
    """Audit keys by author from a CA folder, NAME=FILE pairs and bundle folders (none
    when none is given)."""
    from fedcare.net.tls import TlsBundle, signing_keys

    found: dict[str, list[Ed25519PublicKey]] = {}
    if ca_dir is not None:
        for name, values in signing_keys(ca_dir).items():
            found.setdefault(name, []).extend(values)
    for pair in keys:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise ConfigError(
                f"--key expects NAME=FILE (a signing.pub or a certificate), found {pair!r}"
            )
        found.setdefault(name, []).append(_public_key(Path(file)))
    for folder in bundles:
        bundle = TlsBundle.load(folder)
        found.setdefault(bundle.name, []).append(bundle.signing_public_key())
    return found


def keys_beside(log: Path) -> dict[str, list[Ed25519PublicKey]]:
    """Without key options: the signers the coordinator left next to its log, or an error
    that says what to pass."""
    from fedcare.net.audit_signers import SIGNERS_FILE, signers_beside

    signers = signers_beside(log)
    if signers is None:
        raise ConfigError(
            f"no public keys to verify '{log}' with: there is no {SIGNERS_FILE} beside it "
            "(a coordinator writes one next to its audit.log). Pass --ca-dir CA_FOLDER (the "
            "study CA folder, as made by 'fedcare certs init'), --bundle BUNDLE_FOLDER (the "
            "author's bundle) or --key NAME=FILE (a signing.pub or certificate)"
        )
    console.print(f"[dim]keys:[/] {escape(signers.describe())}", highlight=False, soft_wrap=True)
    return signers.keys


@app.command("verify")
def verify_cmd(
    log: Annotated[Path, typer.Argument(help="Audit log (JSON lines).")],
    ca_dir: Annotated[
        Path | None, typer.Option("--ca-dir", help="Study CA folder: keys of every party.")
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="NAME=FILE: a signing.pub or certificate (repeatable)."),
    ] = None,
    bundle: Annotated[
        list[Path] | None, typer.Option("--bundle", help="A party's bundle folder (repeatable).")
    ] = None,
    copy: Annotated[
        str | None,
        typer.Option(
            "--copy",
            help="LOG is the copy (or query release log) kept by this site (gaps are expected).",
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option("--against", help="With --copy: the coordinator's log to compare it with."),
    ] = None,
    expect_head: Annotated[
        str | None,
        typer.Option(help="Hash the last entry must have (detects entries cut from the end)."),
    ] = None,
) -> None:
    """Check hashes, signatures and the chain; name every edited, removed, reordered or forged entry."""
    from fedcare.runtime.audit import compare, verify
    from fedcare.runtime.query_release_log import compare_releases, is_release_log

    with user_errors():
        if against is not None and copy is None:
            raise ConfigError("--against compares a site's copy: also pass --copy SITE")
        if not log.is_file():
            raise FileNotFoundError(f"{log}: no audit log here")
        public = collect_keys(ca_dir, key or [], bundle or []) or keys_beside(log)
        report = verify(log, public, partial=copy is not None, expect_head=expect_head)
        problems = list(report.problems)
        if against is not None and copy is not None:
            problems += (
                compare_releases(against, log, copy)
                if is_release_log(log)
                else compare(against, log, copy)
            )
        if copy is None:
            problems += _cross_check(log)
    if not problems:
        console.print(f"[green]ok[/] {report.summary()}", highlight=False)
        return
    console.print(
        f"[bold red]tampered[/] {log}: {len(problems)} problem(s) in {report.entries} entries",
        highlight=False,
    )
    for problem in problems:
        console.print(f"  - {problem.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _cross_check(log: Path) -> list[AuditProblem]:
    """A coordinator's log in a study folder: what its run store says the log must hold."""
    from fedcare.net.audit_crosscheck import cross_check, store_beside
    from fedcare.net.store import RunStore

    found = store_beside(log)
    if found is None:
        return []
    console.print(f"[dim]cross-checked with:[/] {escape(str(found))}", highlight=False)
    with RunStore.in_folder(found.parent, found.name) as store:
        return cross_check(log, store)


@app.command("show")
def show_cmd(
    log: Annotated[Path, typer.Argument(help="Audit log (JSON lines).")],
    site: Annotated[str | None, typer.Option(help="Only entries that concern this site.")] = None,
    last: Annotated[int | None, typer.Option(min=1, help="Only the last N entries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON entry per line.")] = False,
) -> None:
    """List entries (index, time, kind, author, body); does not verify them, see 'verify'."""
    from fedcare.runtime.audit import AuditLog

    with user_errors():
        if not log.is_file():
            raise FileNotFoundError(f"{log}: no audit log here")
        audit = AuditLog(log)
        entries = audit.entries_concerning(site) if site else audit.entries()
    if last is not None:
        entries = entries[-last:]
    if as_json:
        for entry in entries:
            typer.echo(entry.to_json())
        return
    table = Table(title=f"{log}" + (f" (concerning {site})" if site else ""))
    for column in ("#", "time", "kind", "author", "body", "hash"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry.index),
            entry.time[:19].replace("T", " "),
            entry.kind,
            entry.author,
            json.dumps(entry.body, sort_keys=True),
            entry.hash[:12],
        )
    console.print(table)
