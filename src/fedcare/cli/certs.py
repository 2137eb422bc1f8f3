"""``fedcare certs``: the coordinating centre's study CA and the bundles it hands out.

fedcare certs init heart-study                 # ca/ with ca.key (keep it offline)
fedcare certs issue coordinator --role coordinator --host coord.example.org
fedcare certs issue cleveland                  # bundles/cleveland/ for that hospital
fedcare certs revoke cleveland                 # refused from the next connection on
fedcare certs list
"""

from __future__ import annotations

import datetime as dt
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcare.cli.errors import user_errors

app = typer.Typer(
    help="The study certificate authority: create it, issue site and coordinator bundles, revoke.",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 160)


class RoleChoice(StrEnum):
    site = "site"
    coordinator = "coordinator"


CaDir = Annotated[Path, typer.Option("--ca-dir", help="Folder of the study CA.")]


@app.command("init")
def init(
    study: Annotated[str, typer.Argument(help="Study name (goes into every certificate).")],
    ca_dir: CaDir = Path("ca"),
    days: Annotated[int, typer.Option(min=1, help="Validity of the CA in days.")] = 3650,
) -> None:
    """Create the study CA (ca.key 0600, ca.crt, revoked.json)."""
    from fedcare.net.tls import init_study_ca

    with user_errors():
        init_study_ca(ca_dir, study, valid_days=days)
    console.print(f"Created the CA of study [bold]{study}[/] in [bold]{ca_dir}[/]")
    console.print(
        f"{ca_dir / 'ca.key'} signs every certificate of this study: keep it off the network.",
        highlight=False,
    )


@app.command("issue")
def issue(
    name: Annotated[str, typer.Argument(help="Site (hospital) or coordinator name.")],
    role: Annotated[RoleChoice, typer.Option(help="What the bundle is for.")] = RoleChoice.site,
    ca_dir: CaDir = Path("ca"),
    out: Annotated[
        Path | None, typer.Option(help="Bundle folder to write (default: bundles/NAME).")
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Host name or IP the coordinator is reached at (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 730,
) -> None:
    """Issue a key + certificate bundle (mTLS and audit signing keys) for a site or the coordinator."""
    from fedcare.net.tls import check_name, issue_bundle

    with user_errors():
        check_name(name, "certificate name")
        target = out or Path("bundles") / name
        hosts = tuple(host) if host else ("localhost", "127.0.0.1")
        issue_bundle(ca_dir, name, target, role.value, hosts, valid_days=days)
    what = f"coordinator (reachable as {', '.join(hosts)})" if role == "coordinator" else "site"
    console.print(f"Issued a {what} bundle for [bold]{name}[/] in [bold]{target}[/]")
    console.print(
        "It holds private keys (key.pem, signing.key): hand it over on a secure channel only.",
        highlight=False,
    )


@app.command("revoke")
def revoke_cmd(
    name: Annotated[str, typer.Argument(help="Site or coordinator whose certificates to revoke.")],
    ca_dir: CaDir = Path("ca"),
) -> None:
    """Revoke every certificate issued to NAME; the coordinator refuses it from then on."""
    from fedcare.net.tls import revoke

    with user_errors():
        serials = revoke(ca_dir, name)
    if serials:
        listed = ", ".join(f"{s:x}" for s in serials)
        console.print(f"Revoked {len(serials)} certificate(s) of [bold]{name}[/]: {listed}")
    else:
        console.print(f"Every certificate of [bold]{name}[/] was already revoked")


@app.command("list")
def list_cmd(ca_dir: CaDir = Path("ca")) -> None:
    """Certificates this CA issued, with role, expiry and revocation status."""
    from fedcare.net.tls import issued

    with user_errors():
        if not (ca_dir / "ca.crt").is_file():
            raise FileNotFoundError(f"{ca_dir}: no study CA here (run 'fedcare certs init')")
        rows = issued(ca_dir)
    table = Table(title=f"Certificates issued by {ca_dir}")
    for column in ("name", "role", "serial", "expires", "status"):
        table.add_column(column)
    now = dt.datetime.now(dt.UTC)
    for cert in rows:
        status = (
            "[red]revoked[/]"
            if cert.revoked
            else ("[yellow]expired[/]" if cert.not_after < now else "[green]valid[/]")
        )
        table.add_row(
            cert.name, cert.role, f"{cert.serial:x}"[:16], f"{cert.not_after:%Y-%m-%d}", status
        )
    console.print(table)
