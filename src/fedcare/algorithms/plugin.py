"""The algorithm registry: built-in specs and those of installed plug-ins.

A built-in algorithm module ends with ``SPECS``, a tuple of
:class:`~fedcare.algorithms.spec.AlgorithmSpec`. A third-party package adds algorithms
without touching fedcare by declaring an entry point in the ``fedcare.algorithms`` group
that resolves to one spec or a sequence of them::

    [project.entry-points."fedcare.algorithms"]
    fedtoy = "fedtoy.algorithm:SPEC"

A plug-in that cannot be loaded, whose spec is malformed, or whose name is taken is a
ConfigError naming the entry point, so a broken install is never a silently missing
strategy.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fedcare.algorithms.client_rule import ClientRule
from fedcare.algorithms.spec import AlgorithmSpec
from fedcare.core.errors import ConfigError

GROUP = "fedcare.algorithms"

# Built-in algorithm modules, each ending with its SPECS.
BUILTIN_MODULES: tuple[str, ...] = (
    "fedcare.algorithms.fedavg",
    "fedcare.algorithms.fedprox",
    "fedcare.algorithms.scaffold",
    "fedcare.algorithms.fedsgd",
    "fedcare.algorithms.qfedavg",
    "fedcare.algorithms.personal",
    "fedcare.algorithms.mocha",
)

# The methods a client rule must have: those of the protocol, however it grows.
_CLIENT_METHODS = tuple(
    k for k, v in vars(ClientRule).items() if not k.startswith("_") and callable(v)
)


@dataclass(frozen=True)
class Registered:
    spec: AlgorithmSpec[Any]
    source: str  # "fedcare.algorithms.fedavg" or "entry point 'x = pkg.mod:SPEC'"


class AlgorithmRegistry:
    """Strategy names -> specs, each remembered with where it came from."""

    def __init__(self) -> None:
        self._entries: dict[str, Registered] = {}

    def register(self, spec: object, *, source: str) -> None:
        """Add ``spec``; a malformed spec or a taken name is a ConfigError naming ``source``."""
        if not isinstance(spec, AlgorithmSpec):
            raise ConfigError(
                f"{source}: expected a fedcare.algorithms.spec.AlgorithmSpec, "
                f"found {type(spec).__name__}"
            )
        taken = self._entries.get(spec.name)
        if taken is not None:
            raise ConfigError(
                f"{source}: algorithm '{spec.name}' is already registered by {taken.source}; "
                f"rename one of them"
            )
        _check_builds(spec, source)
        self._entries[spec.name] = Registered(spec, source)

    def register_all(self, specs: object, *, source: str) -> None:
        """Register one spec or a sequence of specs."""
        if isinstance(specs, Sequence) and not isinstance(specs, str):
            for spec in specs:
                self.register(spec, source=source)
        else:
            self.register(specs, source=source)

    def get(self, name: str) -> AlgorithmSpec[Any] | None:
        entry = self._entries.get(name)
        return entry.spec if entry else None

    def source(self, name: str) -> str:
        return self._entries[name].source

    def names(self) -> list[str]:
        return sorted(self._entries)

    def param_owners(self, param: str) -> list[str]:
        """The algorithms that take ``param`` as their own parameter."""
        return sorted(n for n, e in self._entries.items() if param in e.spec.param_names)

    def own_params(self) -> frozenset[str]:
        """Every algorithm-specific parameter name of every registered algorithm."""
        return frozenset().union(*(e.spec.param_names for e in self._entries.values()))


def _check_builds(spec: AlgorithmSpec[Any], source: str) -> None:
    """The spec's client rule builds from its default parameters and keeps its hooks."""
    try:
        client = spec.client(spec.params())
    except Exception as exc:
        raise ConfigError(
            f"{source}: algorithm '{spec.name}': its client rule does not build from its "
            f"default parameters: {exc}"
        ) from exc
    missing = [m for m in _CLIENT_METHODS if not callable(getattr(client, m, None))]
    if missing:
        raise ConfigError(
            f"{source}: algorithm '{spec.name}': the client rule {type(client).__name__} lacks "
            f"{missing}; see fedcare.algorithms.client_rule.ClientRule"
        )
    needs_loss = bool(getattr(client, "needs_start_loss", False))
    if needs_loss != ("start_loss" in spec.hooks):
        said = "declares" if "start_loss" in spec.hooks else "does not declare"
        raise ConfigError(
            f"{source}: algorithm '{spec.name}' {said} the 'start_loss' hook, but its client "
            f"rule has needs_start_loss={needs_loss}"
        )


def plugin_entry_points() -> Iterable[EntryPoint]:
    """The installed entry points of the ``fedcare.algorithms`` group."""
    return entry_points(group=GROUP)


def load_registry(plugins: Iterable[EntryPoint]) -> AlgorithmRegistry:
    """Built-in algorithms, then every plug-in, in entry point name order."""
    registry = AlgorithmRegistry()
    for module_name in BUILTIN_MODULES:
        registry.register_all(importlib.import_module(module_name).SPECS, source=module_name)
    for point in sorted(plugins, key=lambda p: p.name):
        source = f"entry point '{point.name} = {point.value}' (group {GROUP})"
        try:
            loaded = point.load()
        except Exception as exc:
            raise ConfigError(
                f"{source}: could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        registry.register_all(loaded, source=source)
    return registry


@cache
def algorithms() -> AlgorithmRegistry:
    """The registry of this process (built once, on first use)."""
    return load_registry(plugin_entry_points())


def reload_algorithms() -> AlgorithmRegistry:
    """Forget the registry and load it again (after installing or removing a plug-in)."""
    algorithms.cache_clear()
    return algorithms()
