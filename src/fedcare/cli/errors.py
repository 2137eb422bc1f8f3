"""How every fedcare command reports an expected failure: one red line, exit code 2.

A bad config, a missing file, a full disk or a refused certificate is the user's to fix, so it gets a
message, not a traceback. Unexpected exceptions still show their traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from fedcare.core.errors import FedcareError
from fedcare.core.storage import storage_failure

err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
EXPECTED = (FedcareError, FileNotFoundError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Inside this block, an expected failure prints one red line and exits with code 2."""
    try:
        yield
    except EXPECTED as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OSError as exc:  # a full disk or read-only file is the user's to fix, too
        failure = storage_failure(exc)
        if failure is None:
            raise
        err_console.print(f"[bold red]error:[/] {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def friendly_errors(func: F) -> F:
    """Decorator form of :func:`user_errors` for a whole command."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
