"""Sample-level DP-SGD accounting for a federated run: one noise multiplier and one
accountant per site.

Each site k runs DP-SGD on its own rows: every local step Poisson-samples rows with
probability q_k = batch_size / n_k, and the site's accountant composes its steps. The
steps of one site touch only that site's rows, so each site's epsilon is its own (parallel
composition); the run's privacy is the *worst* site's.

**Calibration is per site.** With a target ``epsilon``, site k's noise multiplier z_k is
the smallest that keeps ``rounds x steps_k`` releases at q_k within the target, where
``steps_k = local.steps_for(n_k)``. Why per site, not one z for the whole run: (1) a
deployed site computes its z from the approved plan and its *own* row count, and never
needs the other hospitals' counts; (2) every site spends exactly the target, none less
with more noise than it needs. Sites with few rows have a large q_k and get more noise.
Calibration assumes a site trains in every round (site sampling is public, keyed by the
plan's seed, so it gives no amplification); the accountant reports what was actually spent.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from fedcare.core.errors import ConfigError
from fedcare.core.records import TrainSpec
from fedcare.privacy.accountant import (
    AccountantKind,
    GaussianRelease,
    PrivacyAccountant,
    bisect_noise_multiplier,
    calibrate_noise_multiplier,
    epsilon_of,
)
from fedcare.privacy.spec import PlannedCost, SampleDPSpec


def sampling_rate(num_samples: int, spec: TrainSpec) -> float:
    """q = batch_size / n: the expected batch is ``spec.batch_size`` rows (full batch: q = 1)."""
    if num_samples <= 0:
        raise ConfigError(f"DP-SGD needs a site with at least one row, found {num_samples}")
    if spec.batch_size is None:
        return 1.0
    return min(1.0, spec.batch_size / num_samples)


class _RdpOrderNotice(logging.Filter):
    """dp-accounting logs each small fractional RDP order it cannot evaluate at a small q;
    it drops that order and the bound stays valid. One line per order and z would flood a
    study's terminal during calibration."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_rdp() -> Iterator[None]:
    logger, notice = logging.getLogger("absl"), _RdpOrderNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


_TOLERANCE = 0.01  # calibrated epsilon lies in [target - tolerance, target]
_INTEGER_ORDERS = tuple(o for o in rdp_lib.DEFAULT_RDP_ORDERS if float(o).is_integer())


@functools.lru_cache(maxsize=256)
def _calibrated(
    epsilon: float, delta: float, steps: int, q: float, accountant: AccountantKind
) -> float:
    # Every seed of a study calibrates the same sites again: cache the answer.
    with _quiet_rdp():
        if accountant != "rdp" or q >= 1.0:
            return calibrate_noise_multiplier(epsilon, delta, steps, q, accountant=accountant)
        return _calibrate_rdp(epsilon, delta, steps, q)


def _calibrate_rdp(target: float, delta: float, steps: int, q: float) -> float:
    """RDP calibration in two passes, several times faster than one bisection over all orders.

    The fractional RDP orders of a subsampled Gaussian are slow to evaluate; the integer
    orders have a closed form. Epsilon over a subset of orders bounds the full accountant's
    from above, so the integer-order answer z_int is already private under the full
    accountant, which then searches only just below z_int. The answer meets the same
    contract as :func:`calibrate_noise_multiplier`: full epsilon in [target - 0.01, target].
    """

    def integer(z: float) -> float:
        accountant = RdpAccountant(orders=_INTEGER_ORDERS)
        accountant.compose(GaussianRelease(z, q, 1).event(), steps)
        return float(accountant.get_epsilon(delta))

    def full(z: float) -> float:
        return epsilon_of((GaussianRelease(z, q, steps),), delta, "rdp")

    hi = 1.0
    while integer(hi) > target:
        if hi >= 1e4:  # unreachable target: the library search words the refusal
            return calibrate_noise_multiplier(target, delta, steps, q, accountant="rdp")
        hi *= 2.0
    hi = bisect_noise_multiplier(integer, 0.0, hi, target, 1e-3)
    lo = hi
    while full(lo) <= target:  # step down until the full accountant exceeds the target
        hi, lo = lo, lo * 0.95
        if full(hi) >= target - _TOLERANCE:
            return hi
    return bisect_noise_multiplier(full, lo, hi, target, _TOLERANCE)


@dataclass(frozen=True)
class SitePlan:
    """One site's DP-SGD settings for a run: z, q and the local steps of one round."""

    noise_multiplier: float
    sampling_rate: float
    steps_per_round: int

    @classmethod
    def of(cls, spec: SampleDPSpec, num_samples: int, train: TrainSpec, rounds: int) -> SitePlan:
        """Settings for a site with ``num_samples`` rows; calibrated if ``spec`` targets epsilon."""
        q = sampling_rate(num_samples, train)
        steps = train.steps_for(num_samples)
        if spec.noise_multiplier is not None:
            return cls(spec.noise_multiplier, q, steps)
        if spec.epsilon is None:
            raise ConfigError("sample_dp needs a target epsilon or a noise multiplier")
        try:
            z = _calibrated(spec.epsilon, spec.delta, rounds * steps, q, spec.accountant)
        except ConfigError as exc:
            raise ConfigError(
                f"sample_dp: a site with {num_samples} rows ({steps} steps per round at "
                f"q={q:.4g}, {rounds} rounds): {exc}"
            ) from exc
        return cls(z, q, steps)

    def epsilon_after(self, spec: SampleDPSpec, rounds_trained: int) -> float:
        """Epsilon at ``spec.delta`` once the site has trained ``rounds_trained`` rounds."""
        if rounds_trained <= 0:
            return 0.0
        release = GaussianRelease(
            self.noise_multiplier, self.sampling_rate, rounds_trained * self.steps_per_round
        )
        with _quiet_rdp():
            return epsilon_of((release,), spec.delta, spec.accountant)


@dataclass(frozen=True)
class SiteSampleCost(PlannedCost):
    """What a job's DP-SGD costs one site's records, from the plan and its own row count
    (charged as if it trained every round: an upper bound when sites are sampled)."""

    spec: SampleDPSpec
    plan: SitePlan
    rounds: int

    @classmethod
    def of(cls, spec: SampleDPSpec, num_samples: int, train: TrainSpec, rounds: int) -> Self:
        return cls(spec, SitePlan.of(spec, num_samples, train, rounds), rounds)

    def epsilon_after(self, releases: int) -> float:
        return self.plan.epsilon_after(self.spec, releases)


class SampleLevelPrivacy:
    """The sample-level DP state of one simulated run: per-site plans and accountants.

    The trainer charges a site's accountant at every step it takes; :meth:`close_round`
    reads every site's epsilon after a round (a site not sampled keeps its last value).
    """

    def __init__(
        self, spec: SampleDPSpec, counts: Mapping[str, int], train: TrainSpec, rounds: int
    ) -> None:
        self.spec = spec
        self.plans = {name: SitePlan.of(spec, int(n), train, rounds) for name, n in counts.items()}
        self.accountants = {name: PrivacyAccountant(spec.delta, spec.accountant) for name in counts}

    def noise_multiplier(self, site: str) -> float:
        return self.plans[site].noise_multiplier

    def close_round(self, round_index: int) -> dict[str, float]:
        """Every site's epsilon so far, recorded as round ``round_index``'s."""
        with _quiet_rdp():
            return {name: acc.close_round(round_index) for name, acc in self.accountants.items()}

    def epsilons(self) -> dict[str, float]:
        with _quiet_rdp():
            return {name: acc.epsilon() for name, acc in self.accountants.items()}

    def describe(self) -> dict[str, Any]:
        """JSON-safe settings for reports: delta, accountant, clip norm, each site's z."""
        return {
            "delta": self.spec.delta,
            "accountant": self.spec.accountant,
            "clip_norm": self.spec.clip_norm,
            "target_epsilon": self.spec.epsilon,
            "noise_multiplier": {n: p.noise_multiplier for n, p in self.plans.items()},
            "sampling_rate": {n: p.sampling_rate for n, p in self.plans.items()},
        }

    # -- checkpoints -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {name: acc.to_dict() for name, acc in self.accountants.items()}

    def restore(self, data: Mapping[str, Any]) -> None:
        if set(data) != set(self.accountants):
            raise ConfigError(
                f"sample-level privacy checkpoint has sites {sorted(data)}, the run has "
                f"{sorted(self.accountants)}"
            )
        self.accountants = {name: PrivacyAccountant.from_dict(v) for name, v in data.items()}
