"""What a study asks for in privacy: client-level DP settings, checked once at configuration.

``mode`` says who adds the noise:

* ``central``: the coordinator clips each site's update and noises the sum (trusted
  coordinator; the usual DP-FedAvg of McMahan et al. 2018);
* ``local``: every site clips and noises its own update before it leaves the site (no
  trust in the coordinator; much more noise for the same epsilon);
* ``distributed``: every site adds its share of the noise, N(0, (zC)^2 / n), and secure
  aggregation or encryption hides each share, so only the sum, carrying the full noise,
  is ever seen.

Give ``epsilon`` (the noise multiplier is calibrated for the run's rounds and site sampling
rate) or ``noise_multiplier`` directly (epsilon is then reported, not targeted).

``sample_dp`` (:class:`SampleDPSpec`) is the other unit of privacy: DP-SGD inside each
site's local training protects every *row* (patient record) against anyone who sees the
site's updates or the models built from them, with an epsilon per site. ``dp`` protects a
site's whole contribution. They compose and may both be on; ``secure`` adds no epsilon,
it hides each site's update so the coordinator sees only the sum.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedcare.core.errors import ConfigError
from fedcare.privacy.accountant import ACCOUNTANT_KINDS, AccountantKind
from fedcare.transforms.declared import Declared

DPMode = Literal["central", "local", "distributed"]
DP_MODES: tuple[str, ...] = ("central", "local", "distributed")
_KEYS = {
    "mode",
    "epsilon",
    "noise_multiplier",
    "delta",
    "clip_norm",
    "adaptive_clip",
    "accountant",
}
_ADAPTIVE_KEYS = {"target_quantile", "learning_rate", "count_noise_std"}


@dataclass(frozen=True)
class AdaptiveClipSpec:
    """Andrew et al. 2021: move C towards the ``target_quantile`` of update norms.

    ``count_noise_std`` None means the paper's suggestion, expected sites / 20.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None


@dataclass(frozen=True)
class DPSpec:
    mode: DPMode = "central"
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    clip_norm: float = 1.0  # the fixed C, or adaptive clipping's starting C
    adaptive_clip: AdaptiveClipSpec | None = None
    accountant: AccountantKind = "rdp"

    @property
    def label(self) -> str:
        target = (
            f"ε={self.epsilon:g}" if self.epsilon is not None else f"z={self.noise_multiplier:g}"
        )
        clip = "adaptive C" if self.adaptive_clip else f"C={self.clip_norm:g}"
        return f"{self.mode} DP {target}, δ={self.delta:g}, {clip}"

    @property
    def declared(self) -> Declared:
        """The noise stage: where it runs and what it needs of the stages around it.

        Central noise is added at the coordinator, which must clip each update; local and
        distributed noise at the site, a distributed share private only once summed. Every
        mode calibrates its noise to a clipped sum, so the aggregation must be the mean.
        """
        return Declared(
            name=f"dp ({self.mode})",
            title=f"{self.mode} DP",
            at_coordinator=self.mode == "central",
            needs_each_update="central DP clips each update at the coordinator, which {label} "
            "prevents; use dp mode 'distributed' with secure summation"
            if self.mode == "central"
            else None,
            needs_sum_only="distributed DP adds only a share of the noise at each site, so the "
            "coordinator must see only the sum; add secure: secure_aggregation (or encrypt)"
            if self.mode == "distributed"
            else None,
            needs_sum_aggregation="DP-FedAvg's noise is calibrated to a clipped sum; robust rule "
            "'{aggregator}' changes the sensitivity, so the epsilon would be wrong",
            covers="differential privacy",
        )


def _positive(value: Any, field: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: '{field}' must be a number, found {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{where}: '{field}' must be finite and > 0, found {value!r}")
    return number


def _check_keys(raw: Any, where: str, what: str, allowed: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {what}, found {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _guarantee(
    raw: Mapping[str, Any], where: str, calibrated: str, reported: str
) -> tuple[bool, bool, float, Any]:
    """(has epsilon, has noise multiplier, delta, accountant): the keys both DP kinds share."""
    has_eps, has_z = raw.get("epsilon") is not None, raw.get("noise_multiplier") is not None
    if has_eps == has_z:
        raise ConfigError(
            f"{where}: give exactly one of 'epsilon' ({calibrated} calibrated to reach it) or "
            f"'noise_multiplier' ({reported} reported), found {'both' if has_eps else 'neither'}"
        )
    delta = _positive(raw.get("delta", 1e-5), "delta", where)
    if delta >= 1:
        raise ConfigError(f"{where}: 'delta' must be < 1, found {delta}")
    accountant = raw.get("accountant", "rdp")
    if accountant not in ACCOUNTANT_KINDS:
        raise ConfigError(
            f"{where}: 'accountant' must be one of {ACCOUNTANT_KINDS}, found {accountant!r}"
        )
    return has_eps, has_z, delta, accountant


def _release(
    raw: Mapping[str, Any], where: str, has_eps: bool, has_z: bool, delta: float
) -> dict[str, Any]:
    """The guarantee and clip norm both DP kinds take from their settings."""
    return {
        "epsilon": _positive(raw["epsilon"], "epsilon", where) if has_eps else None,
        "noise_multiplier": _positive(raw["noise_multiplier"], "noise_multiplier", where)
        if has_z
        else None,
        "delta": delta,
        "clip_norm": _positive(raw.get("clip_norm", 1.0), "clip_norm", where),
    }


def parse_dp(raw: Mapping[str, Any], *, where: str = "dp") -> DPSpec:
    """A DPSpec from a config mapping; every problem names the key and what was expected."""
    _check_keys(raw, where, "DP settings", _KEYS)
    mode = raw.get("mode", "central")
    if mode not in DP_MODES:
        raise ConfigError(f"{where}: 'mode' must be one of {DP_MODES}, found {mode!r}")
    has_eps, has_z, delta, accountant = _guarantee(raw, where, "noise is", "epsilon is")
    adaptive = None
    if raw.get("adaptive_clip") is not None:
        block = raw["adaptive_clip"]
        if block is True:
            block = {}
        if not isinstance(block, Mapping):
            raise ConfigError(f"{where}.adaptive_clip: expected a mapping or true, found {block!r}")
        extra = sorted(set(block) - _ADAPTIVE_KEYS)
        if extra:
            raise ConfigError(
                f"{where}.adaptive_clip: unknown key(s) {extra}; allowed: {sorted(_ADAPTIVE_KEYS)}"
            )
        quantile = float(block.get("target_quantile", 0.5))
        if not 0 < quantile < 1:
            raise ConfigError(
                f"{where}.adaptive_clip: 'target_quantile' must be in (0, 1), found {quantile}"
            )
        sigma_b = block.get("count_noise_std")
        adaptive = AdaptiveClipSpec(
            target_quantile=quantile,
            learning_rate=_positive(
                block.get("learning_rate", 0.2), "learning_rate", f"{where}.adaptive_clip"
            ),
            count_noise_std=None
            if sigma_b is None
            else _positive(sigma_b, "count_noise_std", f"{where}.adaptive_clip"),
        )
        if mode != "central":
            raise ConfigError(
                f"{where}: adaptive clipping needs the coordinator to see who was clipped; "
                f"it works with mode 'central' only, found '{mode}'"
            )
    return DPSpec(
        mode=mode,
        **_release(raw, where, has_eps, has_z, delta),
        adaptive_clip=adaptive,
        accountant=accountant,
    )


_SAMPLE_KEYS = {"epsilon", "noise_multiplier", "delta", "clip_norm", "accountant"}


@dataclass(frozen=True)
class SampleDPSpec:
    """Sample-level DP-SGD at every site: each training row is protected, not a whole site.

    Every local step clips each row's gradient to ``clip_norm`` and adds N(0, (zC)^2); each
    site's accountant counts its own steps at q = batch_size / n_k. With ``epsilon`` the
    noise multiplier is calibrated per site (see :mod:`fedcare.privacy.sample_level`).
    """

    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    clip_norm: float = 1.0
    accountant: AccountantKind = "rdp"

    @property
    def label(self) -> str:
        target = (
            f"ε={self.epsilon:g}" if self.epsilon is not None else f"z={self.noise_multiplier:g}"
        )
        return f"sample-level DP-SGD {target}, δ={self.delta:g}, C={self.clip_norm:g}"


def parse_sample_dp(raw: Mapping[str, Any], *, where: str = "sample_dp") -> SampleDPSpec:
    """A SampleDPSpec from a config mapping; every problem names the key and what was expected."""
    _check_keys(raw, where, "DP-SGD settings", _SAMPLE_KEYS)
    has_eps, has_z, delta, accountant = _guarantee(
        raw, where, "each site's noise is", "each site's epsilon is"
    )
    return SampleDPSpec(
        **_release(raw, where, has_eps, has_z, delta),
        accountant=accountant,
    )


class PlannedCost(ABC):
    """What a job spends of a site's budget over its planned rounds, at its spec's delta."""

    spec: DPSpec | SampleDPSpec
    rounds: int

    @abstractmethod
    def epsilon_after(self, releases: int) -> float: ...

    @property
    def planned_epsilon(self) -> float:
        return self.epsilon_after(self.rounds)

    @property
    def delta(self) -> float:
        return self.spec.delta
