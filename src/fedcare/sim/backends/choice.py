"""The ``--backend`` and ``--address`` options of ``fedcare simulate``, checked once.

``inprocess`` (the default) trains every chunk of sites in this process; ``ray`` runs the
chunks as Ray tasks on a local Ray instance, or on the existing cluster at ``address``
(what ``ray start --head`` prints). Ray is an optional extra, so asking for it without
having it installed is a configuration error that says how to install it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Final

from fedcare.core.errors import ConfigError

BACKENDS: Final = ("inprocess", "ray")
RAY_EXTRA_HINT: Final = "pip install 'fedcare[ray]'"


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs a study's federated rounds, and for Ray, which cluster."""

    name: str = "inprocess"
    address: str | None = None  # None: start a local Ray instance for the study

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"

    def describe(self) -> str:
        if not self.is_ray:
            return "in-process"
        return f"Ray cluster at {self.address}" if self.address else "local Ray instance"


def choose_backend(name: str = "inprocess", address: str | None = None) -> BackendChoice:
    """Check the options together; raise ConfigError naming the option and what was found."""
    if name not in BACKENDS:
        raise ConfigError(
            f"--backend: unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}"
        )
    if address is not None:
        if name != "ray":
            raise ConfigError(
                f"--address {address!r} is a Ray cluster's address and needs --backend ray "
                f"(found --backend {name})"
            )
        if not address.strip():
            raise ConfigError(
                "--address: empty; give the address `ray start --head` printed (HOST:PORT), "
                "or leave --address out to start a local Ray instance"
            )
    if name == "ray":
        require_ray()
    return BackendChoice(name, address.strip() if address is not None else None)


def require_ray() -> None:
    """Raise ConfigError when the Ray backend cannot be imported (ray is not installed)."""
    try:
        importlib.import_module("fedcare.sim.backends.ray_backend")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "ray"
        raise ConfigError(
            f"--backend ray needs Ray, which is not installed here (cannot import "
            f"{missing!r}): {RAY_EXTRA_HINT}"
        ) from exc
