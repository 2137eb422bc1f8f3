"""How sites hide their updates from the coordinator: secure aggregation or encryption.

Configuration only (pure, no crypto): the simulator and the deployed runtime build the
protocols from it. Checked once, when the study is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fedcare.core.errors import ConfigError
from fedcare.transforms.declared import Declared

SecureKind = Literal["secure_aggregation", "encrypt"]
SECURE_KINDS: tuple[str, ...] = ("secure_aggregation", "encrypt")


@dataclass(frozen=True)
class SecureSpec:
    """How sites hide their updates. ``value_range`` bounds every coordinate (SecAgg's ring)."""

    kind: SecureKind = "secure_aggregation"
    value_range: float = 1.0
    degree: int | None = None  # SecAgg+ neighbourhood size (even), None = complete graph
    threshold: float = 0.5  # fraction of share holders above which secrets are recoverable

    @property
    def label(self) -> str:
        if self.kind == "encrypt":
            return "CKKS encryption"
        return "SecAgg+" if self.degree else "SecAgg"

    @property
    def declared(self) -> Declared:
        """A secure sum: the coordinator sees only the sum, so what is summed must be
        dense and linear, and nothing after it can look at one site's update."""
        return Declared(
            name=self.kind,
            title=self.label,
            label=self.label,
            sum_only="encryption hides" if self.kind == "encrypt" else "secure aggregation masks",
            covers=self.label,
        )


def parse_secure(raw: object, *, where: str = "secure") -> SecureSpec:
    """From ``"secure_aggregation"`` / ``"encrypt"`` or a mapping with ``kind`` and options."""
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a kind or a mapping, found {raw!r}")
    allowed = {"kind", "value_range", "degree", "threshold"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    kind = raw.get("kind")
    if kind not in SECURE_KINDS:
        raise ConfigError(f"{where}: 'kind' must be one of {SECURE_KINDS}, found {kind!r}")
    value_range = float(raw.get("value_range", 1.0))
    if not value_range > 0:
        raise ConfigError(f"{where}: 'value_range' must be > 0, found {value_range}")
    degree = raw.get("degree")
    if degree is not None and (int(degree) < 2 or int(degree) % 2):
        raise ConfigError(f"{where}: 'degree' must be an even number >= 2, found {degree!r}")
    threshold = float(raw.get("threshold", 0.5))
    if not 0.5 <= threshold < 1:
        raise ConfigError(f"{where}: 'threshold' must be in [0.5, 1), found {threshold}")
    if kind == "encrypt" and (degree is not None or "threshold" in raw):
        raise ConfigError(f"{where}: 'degree' and 'threshold' apply to secure_aggregation only")
    return SecureSpec(kind, value_range, None if degree is None else int(degree), threshold)
