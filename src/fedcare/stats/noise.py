"""Differential privacy on a site's releases, charged to its budget ledger like training.

A site that noises its answers adds Laplace (pure epsilon) or Gaussian ((epsilon, delta),
the analytic Gaussian mechanism of Balle and Wang 2018) noise to every value it releases,
scaled by the value's :attr:`Release.sensitivity` (what one patient can change). Which
values may be noised is explicit: a computation declares a sensitivity only for counts and
for sums of variables whose range the plan declares (``bounds``, which clip them); a
release holding any other value (an unbounded sum, a min/max) is refused, never released
unnoised. The ``:suppressed`` flags of small-cell control are not noised (they say only
that a cell was withheld).

Accounting: each answered question spends the spec's (epsilon, delta), split evenly over
the noised arrays (basic composition). The job's new cumulative spend is charged to the
site's :class:`~fedcare.privacy.budget.BudgetLedger` *before* the noise is drawn and the
release leaves, exactly as a deployed site charges a training round before it trains; a
charge that would exceed the budget raises PrivacyBudgetExceededError naming the site and
what it has left, and nothing is released. Noise comes from the run's seed stream
(``noise``, question index, site index), so a simulated query is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.budget import BudgetLedger, JobRef
from fedcare.stats.disclosure import SUPPRESSED_SUFFIX
from fedcare.stats.protocol import Question, Release, Values

Mechanism = Literal["laplace", "gaussian"]


@dataclass(frozen=True)
class NoiseSpec:
    """The privacy of one answered question: its mechanism and (epsilon, delta)."""

    mechanism: Mechanism
    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in ("laplace", "gaussian"):
            raise ConfigError(
                f"noise mechanism must be laplace or gaussian, found '{self.mechanism}'"
            )
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"noise epsilon must be positive and finite, found {self.epsilon}")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ConfigError(
                f"laplace noise is pure epsilon-DP: delta must be 0, found {self.delta}"
            )
        if self.mechanism == "gaussian" and not 0 < self.delta < 1:
            raise ConfigError(f"gaussian noise needs delta in (0, 1), found {self.delta}")


def laplace_scale(l1: float, epsilon: float) -> float:
    """Laplace scale b = sensitivity_1 / epsilon."""
    return l1 / epsilon


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, l2: float, epsilon: float) -> float:
    """The exact delta of the Gaussian mechanism at ``sigma`` (Balle and Wang 2018, Thm 8)."""
    a = l2 / (2.0 * sigma)
    b = epsilon * sigma / l2
    tail = _phi(-a - b)
    return _phi(a - b) - (math.exp(epsilon) * tail if tail > 0 else 0.0)


def gaussian_sigma(l2: float, epsilon: float, delta: float) -> float:
    """The smallest sigma (to 1e-10 relative) giving (epsilon, delta)-DP for sensitivity l2."""
    lo, hi = 1e-12 * l2, l2
    while gaussian_delta(hi, l2, epsilon) > delta:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, l2, epsilon) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-10 * hi:
            break
    return hi


@dataclass
class SiteNoise:
    """One site's noise for one query job: its spec, ledger, job and seed stream."""

    site: str
    spec: NoiseSpec
    ledger: BudgetLedger
    job: JobRef
    seeds: SeedStream
    site_index: int = 0
    spent: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        # A resumed job continues its cumulative spend (charges never decrease).
        self.spent = self.ledger.job_spend().get(self.job.job_id, (0.0, 0.0))

    def check_can_start(self, questions: int) -> None:
        """Refuse a query whose ``questions`` noised answers would not fit the budget.

        Like a training plan's whole-run check before its owner is asked: the job's spend
        so far plus ``questions`` times the spec's (epsilon, delta).
        """
        epsilon = self.spent[0] + questions * self.spec.epsilon
        delta = self.spent[1] + questions * self.spec.delta
        self.ledger.check_can_start(self.job, epsilon, delta)

    def apply(self, question: Question, release: Release, question_index: int) -> Release:
        """The noised release, after charging the ledger; refused if it cannot be noised."""
        keys = sorted(k for k in release.values if not k.endswith(SUPPRESSED_SUFFIX))
        if not keys:
            return release
        unbounded = [k for k in keys if k not in release.sensitivity]
        if unbounded:
            raise ConfigError(
                f"site {self.site}: question '{question.step}' (analysis '{question.analysis}') "
                f"would release {unbounded} with no bound on what one patient can change, so "
                f"they cannot be noised; declare the variables' bounds in the plan (sums), or "
                f"do not ask for them under differential privacy (min/max)"
            )
        epsilon = self.spent[0] + self.spec.epsilon
        delta = self.spent[1] + self.spec.delta
        self.ledger.charge(self.job, epsilon, delta)  # refuses before anything is released
        self.spent = (epsilon, delta)
        rng = self.seeds.generator("noise", question_index, self.site_index)
        share_eps = self.spec.epsilon / len(keys)
        share_delta = self.spec.delta / len(keys)
        values: Values = dict(release.values)
        for key in keys:
            l1, l2 = release.sensitivity[key]
            x = np.asarray(values[key], dtype=np.float64)
            if self.spec.mechanism == "laplace":
                noisy = x + rng.laplace(0.0, laplace_scale(l1, share_eps), x.shape)
            else:
                noisy = x + rng.normal(0.0, gaussian_sigma(l2, share_eps, share_delta), x.shape)
            flags = values.get(key + SUPPRESSED_SUFFIX)
            values[key] = noisy if flags is None else np.where(flags > 0, 0.0, noisy)
        line = (
            f"noised {', '.join(keys)} with {self.spec.mechanism} noise "
            f"(epsilon={self.spec.epsilon:g}, delta={self.spec.delta:g} for this answer); "
            f"job '{self.job.job_id}' has now spent epsilon={epsilon:g}, delta={delta:g}"
        )
        return replace(release, values=values, suppressed=(*release.suppressed, line))
