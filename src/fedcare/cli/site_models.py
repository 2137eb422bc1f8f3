"""``fedcare site allow-model`` / ``disallow-model``: which model code a site may import.

A plan may name its model by import path (``package.module:Class``); the site imports only
the paths listed here (see :mod:`fedcare.runtime.model_allow`). fedcare's built-in models
(logistic, mlp, cnn) need no entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedcare.cli.deploy import DEFAULT_SITE_DIR, console, site_app
from fedcare.cli.errors import friendly_errors

State = Annotated[Path, typer.Option(help="Site folder (as given to 'site start').")]


@site_app.command("allow-model")
@friendly_errors
def allow_model(
    model: Annotated[
        str, typer.Argument(metavar="PATH", help="The import path, package.module:ClassName.")
    ],
    state: State = DEFAULT_SITE_DIR,
    by: Annotated[str, typer.Option(help="Who allows it (recorded).")] = "data owner",
) -> None:
    """Let plans build a model from this import path (its module's code runs at this site)."""
    from fedcare.runtime.model_allow import ModelAllowList, import_module_of

    allow = ModelAllowList.in_folder(state)
    allow.allow(model, by=by)
    console.print(
        f"allowed model {escape(model)}: this site may import module "
        f"'{escape(str(import_module_of(model)))}' (list: {escape(str(allow.path))})",
        highlight=False,
    )


@site_app.command("disallow-model")
@friendly_errors
def disallow_model(
    model: Annotated[str, typer.Argument(metavar="PATH", help="An import path on the list.")],
    state: State = DEFAULT_SITE_DIR,
) -> None:
    """Remove an import path from this site's model allow-list."""
    from fedcare.core.errors import ConfigError
    from fedcare.runtime.model_allow import ModelAllowList

    allow = ModelAllowList.in_folder(state)
    if not allow.disallow(model):
        listed = ", ".join(sorted(allow.entries())) or "empty"
        raise ConfigError(f"'{model}' is not on the model allow-list {allow.path} ({listed})")
    console.print(f"removed model {escape(model)} from {escape(str(allow.path))}", highlight=False)
