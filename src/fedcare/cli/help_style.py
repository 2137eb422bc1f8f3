"""Help screens without type tags: ``--out  Study folder to write.``, not ``--out <path>``.

Recent typer versions print a ``<bool>``, ``<path>`` or ``<list[str]>`` tag beside every
option and argument; the help text already says what each one takes, so the tags are
noise (and ``<bool>`` on a flag is wrong: a flag takes no value). A metavar a command
chooses itself (``metavar="NAME=FILE"``) is still shown. Versions without the tags have
no ``display_type_rich`` and are left as they are.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

# The method typer's help calls for a parameter's type tag (absent in versions without tags).
_TYPE_TAG = "display_type_rich"


def _chosen_metavar(param: Any, ctx: Any) -> str | None:
    return param.metavar if isinstance(param, TyperOption) else None


def hide_type_tags() -> None:
    """Show no type tag in any command's help (call once, before the app runs)."""
    for cls in (TyperOption, TyperArgument):
        if hasattr(cls, _TYPE_TAG):
            setattr(cls, _TYPE_TAG, _chosen_metavar)
