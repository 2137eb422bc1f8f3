"""``fedcare site he-keys``: the CKKS key set the hospitals share for encrypted aggregation.

fedcare site he-keys create study-he.key      # at one hospital; hand the file to the others
fedcare site he-keys show study-he.key        # key id and parameters (compare between sites)
fedcare site start ... --he-keys study-he.key # every site of a plan with secure: encrypt

The coordinator never receives this file: it adds ciphertexts with the public context the
sites send with their updates, and a site decrypts only the round's sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedcare.cli.errors import user_errors

app = typer.Typer(
    help="The CKKS key set the hospitals share (encrypted aggregation; never given to the "
    "coordinator).",
    no_args_is_help=True,
)
console = Console()

KeyFile = Annotated[Path, typer.Argument(help="File of the key set (secret: mode 0600).")]


@app.command("create")
def create(path: KeyFile) -> None:
    """Create a new key set (at one hospital), then hand it to the other hospitals."""
    from fedcare.he.ckks import generate_keys
    from fedcare.he.key_files import write_key_set

    with user_errors():
        keys = generate_keys()
        write_key_set(path, keys)
    console.print(
        f"created CKKS key set [bold]{keys.key_id.hex()}[/] in {path} (owner-only). Give it to "
        "every hospital of the study over a channel you trust; never to the coordinator."
    )


@app.command("show")
def show(path: KeyFile) -> None:
    """Print a key set's id and parameters (every site of a study must show the same id)."""
    from fedcare.he.key_files import read_key_set

    with user_errors():
        keys = read_key_set(path)
    p = keys.params
    console.print(
        f"key id {keys.key_id.hex()}; poly modulus degree {p.poly_modulus_degree}, "
        f"{p.slots} slots, scale 2^{p.scale_bits}, up to {p.max_summands} summands"
    )
