"""Run a PSI in one process: route every party's messages to their recipients.

Depth first (a stack of the parties' message generators), so at most one batch per hop is
in flight and memory stays bounded by the parties' own sets. ``observe`` sees every message
as it crosses (tests use it to check each party's view).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcare.core.errors import ConfigError
from fedcare.linkage.identifiers import KeyedIdentifiers
from fedcare.linkage.messages import PsiMessage
from fedcare.linkage.psi import PsiConfig, PsiParty, PsiResult


def run_psi(
    config: PsiConfig,
    inputs: Mapping[str, KeyedIdentifiers],
    observe: Callable[[PsiMessage], None] | None = None,
    keys: Mapping[str, X25519PrivateKey] | None = None,
) -> dict[str, PsiParty]:
    """Every party's finished machine (read ``.result``; it raises for disjoint sets).

    ``keys`` fixes parties' blinding keys (tests); by default each draws a fresh one.
    """
    missing = sorted(set(config.parties) - set(inputs))
    extra = sorted(set(inputs) - set(config.parties))
    if missing or extra:
        raise ConfigError(
            f"PSI: inputs for parties {list(config.parties)}; missing {missing}, unexpected {extra}"
        )
    chosen = keys or {}
    parties = {
        name: PsiParty(config, name, inputs[name], chosen.get(name)) for name in config.parties
    }
    stack: list[Iterator[PsiMessage]] = [parties[name].start() for name in reversed(config.parties)]
    while stack:
        message = next(stack[-1], None)
        if message is None:
            stack.pop()
            continue
        if observe is not None:
            observe(message)
        stack.append(parties[message.recipient].receive(message))
    return parties


def psi_results(config: PsiConfig, inputs: Mapping[str, KeyedIdentifiers]) -> dict[str, PsiResult]:
    return {name: party.result for name, party in run_psi(config, inputs).items()}
