"""Client-level differential privacy round by round (DP-FedAvg and its variants).

Shared by the simulator and the deployed coordinator, so both release the same noised
mean and report the same epsilon. The maths live in :mod:`fedcare.privacy.mechanisms`
(mechanisms record every noised release with the accountant themselves); this module
decides where each step runs:

* ``central``: the coordinator clips each decoded update to C, sums, noises once;
* ``local``: each site clips and noises its own update (its own accountant);
* ``distributed``: each site clips and adds N(0, (zC)^2 / n); the secure sum carries the
  full noise and the coordinator releases it.

DP-FedAvg averages clipped updates uniformly over the *expected* number of sites (q N): a
site's sample count would change the sensitivity, and a fixed denominator keeps it at C.
Noise comes from a seed stream (purpose "noise") so a run can be reproduced and resumed:
the simulator passes the run's stream; a deployed coordinator passes a stream keyed by a
secret seed of its own (the plan's seed is known to every site, which could then subtract
the noise).

:func:`noise_multiplier_for` and :func:`planned_spend` let a site compute, from the plan
alone, the noise the coordinator will add and the epsilon the whole run will cost;
:class:`SiteBudget` holds a site's ledger to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, PrivacyBudgetExceededError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier
from fedcare.privacy.adaptive_clip import AdaptiveClipConfig, AdaptiveClipNorm
from fedcare.privacy.budget import BudgetLedger, JobRef
from fedcare.privacy.mechanisms import (
    CentralDPFedAvg,
    DistributedDPFedAvg,
    DistributedNoiseShare,
    LocalDPGaussian,
    l2_clip,
    mean_over_expected,
)
from fedcare.privacy.spec import DPSpec, PlannedCost

Vector = npt.NDArray[np.float32]


def noise_multiplier_for(spec: DPSpec, sampling_rate: float, rounds: int) -> float:
    """The noise multiplier z a run uses: given, or calibrated to reach ``spec.epsilon``."""
    if spec.noise_multiplier is not None:
        return spec.noise_multiplier
    if spec.epsilon is None:
        raise ConfigError("DP needs a target epsilon or a noise multiplier")
    q = release_rate(spec, sampling_rate)
    return calibrate_noise_multiplier(
        spec.epsilon, spec.delta, rounds, q, accountant=spec.accountant
    )


def release_rate(spec: DPSpec, sampling_rate: float) -> float:
    """The sampling rate each release is accounted at.

    Local DP: every upload is seen, so there is no amplification by sampling (q = 1).
    """
    return 1.0 if spec.mode == "local" else sampling_rate


def spend_after(
    spec: DPSpec, noise_multiplier: float, sampling_rate: float, releases: int
) -> float:
    """Epsilon at ``spec.delta`` after ``releases`` rounds at (z, q), as the run accounts it."""
    if releases <= 0:
        return 0.0
    accountant = PrivacyAccountant(spec.delta, spec.accountant)
    return accountant.epsilon_if(noise_multiplier, release_rate(spec, sampling_rate), releases)


def planned_spend(spec: DPSpec, sampling_rate: float, rounds: int) -> tuple[float, float]:
    """(epsilon, delta) a whole run of ``rounds`` will have spent: what a site budgets for."""
    z = noise_multiplier_for(spec, sampling_rate, rounds)
    return spend_after(spec, z, sampling_rate, rounds), spec.delta


def privatise_at_site(
    spec: DPSpec,
    update: Vector,
    *,
    noise_multiplier: float,
    clip_norm: float,
    cohort: int,
    rng: np.random.Generator | None = None,
    accountant: PrivacyAccountant | None = None,
) -> Vector:
    """What leaves a site under ``spec``: the update unchanged (central DP: the coordinator
    clips and noises), clipped and fully noised (local), or clipped with its share of the
    noise for a ``cohort`` of sites (distributed: the secure sum adds the shares up).

    ``rng`` None draws from the OS CSPRNG (a deployed site: the coordinator knows the
    plan's seed, so seeded noise could be subtracted); ``accountant`` records a local
    release (a throwaway one if None).
    """
    if spec.mode == "local":
        return LocalDPGaussian(
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            accountant=accountant or PrivacyAccountant(spec.delta, spec.accountant),
            rng=rng,
        ).privatise(update)
    if spec.mode == "distributed":
        share = DistributedNoiseShare(
            clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng
        )
        return share.privatise(update, cohort)
    return update


class PrivateRounds:
    """DP state of one run: noise multiplier, accountant(s), adaptive clip norm."""

    def __init__(
        self, spec: DPSpec, *, num_sites: int, sampling_rate: float, rounds: int, seeds: SeedStream
    ) -> None:
        self.spec = spec
        self.seeds = seeds
        self.sampling_rate = sampling_rate
        self.expected_sites = sampling_rate * num_sites
        self.noise_multiplier = noise_multiplier_for(spec, sampling_rate, rounds)
        self.accountant = PrivacyAccountant(spec.delta, spec.accountant)
        self.site_accountants: dict[str, PrivacyAccountant] = {}
        self.adaptive: AdaptiveClipNorm | None = None
        if spec.adaptive_clip is not None:
            a = spec.adaptive_clip
            self.adaptive = AdaptiveClipNorm(
                AdaptiveClipConfig(
                    initial_clip_norm=spec.clip_norm,
                    count_noise_std=a.count_noise_std or self._default_count_noise(),
                    target_quantile=a.target_quantile,
                    learning_rate=a.learning_rate,
                )
            )
        self._central = self._build_central()
        self._sum: npt.NDArray[np.float64] | None = None
        self._participants = 0
        self._unclipped = 0

    def _default_count_noise(self) -> float:
        """sigma_b: Andrew et al.'s expected sites / 20, but at least 1.64 z.

        The count query needs 2 sigma_b > z; at 1.64 z the update's own noise multiplier
        z_delta is only 5% above z. With few sites (hospitals, not phones) this floor
        dominates and the clipped-fraction estimate is noisy, so the clip norm drifts
        slowly and randomly; a fixed clip norm is usually better there.
        """
        return max(self.expected_sites / 20, 1.64 * self.noise_multiplier)

    def _build_central(self) -> CentralDPFedAvg | None:
        if self.spec.mode != "central":
            return None
        return CentralDPFedAvg(
            noise_multiplier=self.noise_multiplier,
            expected_sites=self.expected_sites,
            sampling_rate=self.sampling_rate,
            accountant=self.accountant,
            clip=self.adaptive if self.adaptive is not None else self.spec.clip_norm,
            rng=self.seeds.generator("noise"),
        )

    @property
    def clip_norm(self) -> float:
        return self.adaptive.clip_norm if self.adaptive is not None else self.spec.clip_norm

    # -- at the site -----------------------------------------------------------------------
    def at_site(
        self, name: str, site: int, round_index: int, update: Vector, cohort: int
    ) -> Vector:
        """What leaves the site: unchanged (central), noised (local), a noise share (distributed).

        Noise keyed by (round, site) from the run's stream: the simulator's sites.
        """
        accountant = None
        if self.spec.mode == "local":
            accountant = self.site_accountants.setdefault(
                name, PrivacyAccountant(self.spec.delta, self.spec.accountant)
            )
        return privatise_at_site(
            self.spec,
            update,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            cohort=cohort,
            rng=self.seeds.generator("noise", round_index, site + 1),
            accountant=accountant,
        )

    # -- at the coordinator ----------------------------------------------------------------
    def record_local_release(self, name: str) -> None:
        """Local DP in deployment: site ``name`` noised its own update; account for it here.

        The simulator's :meth:`at_site` records the same release while it noises.
        """
        accountant = self.site_accountants.setdefault(
            name, PrivacyAccountant(self.spec.delta, self.spec.accountant)
        )
        accountant.record(self.noise_multiplier, 1.0)

    def start_round(self, round_index: int, size: int) -> None:
        self._sum = np.zeros(size, dtype=np.float64)
        self._participants = 0
        self._unclipped = 0
        if self._central is not None:
            self._central.rng = self.seeds.generator("noise", round_index, 0)

    def clip(self, update: Vector) -> tuple[Vector, bool]:
        """What one decoded update adds to the round's sum, and whether it was within the
        clip norm: central DP clips here, at the trusted coordinator; the other modes were
        clipped at the site and pass unchanged."""
        if self._central is None:
            return update, True
        clipped = l2_clip(update, self._central.clip_norm)
        return clipped.vector, not clipped.clipped

    def add(self, update: Vector) -> None:
        """One decoded site update (central mode clips it here, at the trusted coordinator)."""
        if self._sum is None:
            raise ConfigError("PrivateRounds.add called before start_round")
        vector, within = self.clip(update)
        self._unclipped += int(within and self._central is not None)
        self._sum += vector
        self._participants += 1

    def release(
        self,
        round_index: int,
        secure_total: Vector | None = None,
        *,
        cohort: int = 0,
        received: int = 0,
    ) -> Vector:
        """The round's DP mean update from the sum :meth:`add` built, or from the unmasked
        ``secure_total`` of a secure sum (see :meth:`release_sum`)."""
        total = secure_total if secure_total is not None else self._sum
        if total is None:
            raise ConfigError("PrivateRounds.release called before start_round")
        return self.release_sum(
            round_index,
            total,
            participants=self._participants,
            unclipped=self._unclipped,
            cohort=cohort,
            received=received,
        )

    def release_sum(
        self,
        round_index: int,
        total: npt.NDArray[np.floating[Any]],
        *,
        participants: int,
        unclipped: int,
        cohort: int = 0,
        received: int = 0,
    ) -> Vector:
        """The round's DP mean update from the sum of ``participants`` updates (of which
        ``unclipped`` were within the clip norm); records the release and closes the
        round's epsilon. :meth:`start_round` must have opened the round (it keys the noise).

        Under secure summation pass the ``cohort`` that was asked and how many inputs the
        sum ``received`` (dropped sites took their noise share).
        """
        vector = np.asarray(total, dtype=np.float32)
        if self._central is not None:
            out = self._central.release(vector, participants, unclipped)
        elif self.spec.mode == "distributed":
            out = DistributedDPFedAvg(
                noise_multiplier=self.noise_multiplier,
                expected_sites=self.expected_sites,
                sampling_rate=self.sampling_rate,
                accountant=self.accountant,
            ).release(vector, cohort, received)
        else:
            out = mean_over_expected(vector, self.expected_sites)
        if self.spec.mode != "local":
            self.accountant.close_round(round_index)
        for acc in self.site_accountants.values():
            if not acc.history or acc.history[-1][0] < round_index:
                acc.close_round(round_index)
        return out

    def epsilon(self) -> float:
        """Epsilon spent so far (local DP: the worst site's)."""
        if self.spec.mode == "local":
            return max((a.epsilon() for a in self.site_accountants.values()), default=0.0)
        return self.accountant.epsilon()

    # -- checkpoints -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "accountant": self.accountant.to_dict(),
            "site_accountants": {k: a.to_dict() for k, a in self.site_accountants.items()},
            "adaptive": None if self.adaptive is None else self.adaptive.to_dict(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.noise_multiplier = float(data["noise_multiplier"])
        self.accountant = PrivacyAccountant.from_dict(data["accountant"])
        self.site_accountants = {
            k: PrivacyAccountant.from_dict(v) for k, v in data["site_accountants"].items()
        }
        if data.get("adaptive") is not None and self.adaptive is not None:
            self.adaptive = AdaptiveClipNorm.from_dict(data["adaptive"])
        self._central = self._build_central()


@dataclass(frozen=True)
class JobPrivacy(PlannedCost):
    """What one DP job costs a site, computed from the approved plan alone.

    A site never takes the coordinator's word for its spend: it recomputes the noise
    multiplier (calibrated exactly as the coordinator calibrates it) and the epsilon after
    each round from the plan's DP settings, rounds and sampling rate.
    """

    spec: DPSpec
    noise_multiplier: float
    sampling_rate: float
    rounds: int

    @classmethod
    def of(cls, spec: DPSpec, sampling_rate: float, rounds: int) -> JobPrivacy:
        z = noise_multiplier_for(spec, sampling_rate, rounds)
        return cls(spec, z, sampling_rate, rounds)

    def epsilon_after(self, releases: int) -> float:
        return spend_after(self.spec, self.noise_multiplier, self.sampling_rate, releases)


class JobCost(Protocol):
    """What a job spends of a site's budget: (epsilon after n rounds, delta)."""

    @property
    def planned_epsilon(self) -> float: ...

    @property
    def delta(self) -> float: ...

    def epsilon_after(self, releases: int) -> float: ...


def record_level_cost(costs: Sequence[JobCost]) -> JobCost | None:
    """The guarantee a job gives each patient record, from its DP mechanisms.

    Client-level DP protects a site's whole contribution, so every record in it; DP-SGD
    protects each record in the site's update. Either one alone bounds what a record
    costs, so a job with both is charged the cheaper of the two, not their sum.
    """
    return min(costs, key=lambda c: c.planned_epsilon) if costs else None


class SiteBudget:
    """A site's guard over its persistent :class:`BudgetLedger` (one dataset).

    :meth:`admit` refuses a job whose whole plan would not fit what is left (a job
    without DP spends an unbounded epsilon, so a site with a budget refuses it too);
    :meth:`charge_round` records the job's running epsilon *before* the site trains a
    round, and raises instead of recording if the step would exceed the budget.
    """

    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger

    def admit(self, job: JobRef, cost: JobCost | None) -> None:
        if cost is None:
            budget = self.ledger.budget
            raise PrivacyBudgetExceededError(
                f"site '{self.ledger.site}', dataset '{self.ledger.dataset}': job "
                f"'{job.job_id}' has no differential privacy, so its epsilon is unbounded; "
                f"this site enforces a budget of epsilon={budget.epsilon:g}, "
                f"delta={budget.delta:g} (add dp or sample_dp to the strategy)"
            )
        self.ledger.check_can_start(job, cost.planned_epsilon, cost.delta)

    def charge_round(self, job: JobRef, cost: JobCost, round_index: int) -> float:
        """Charge the spend after round ``round_index`` (0-based); returns that epsilon.

        A round trained again (a retried round, a resumed coordinator) is already paid for.
        """
        epsilon = cost.epsilon_after(round_index + 1)
        recorded = self.ledger.job_spend().get(job.job_id)
        if recorded is not None and recorded[0] >= epsilon:
            return recorded[0]
        self.ledger.charge(job, epsilon, cost.delta)
        return epsilon

    def remaining(self) -> tuple[float, float]:
        return self.ledger.remaining()
