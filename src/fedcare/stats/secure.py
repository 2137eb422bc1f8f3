"""Secure summation of a ``sum`` question's releases: the coordinator sees only totals.

Both schemes carry the releases as integer *limbs*, so totals come back exact, not just
"up to the scheme's precision": every value ``v`` is fixed-point encoded as the integer
``q = round(v * 2**FRACTION_BITS)`` (counts are integers, hence exact; other values are
within ``2**-33`` per site), ``q`` is split into ``limbs`` digits of ``b`` bits (the top
one signed), each digit position is summed by the scheme, and the coordinator recombines
``sum_j D_j * 2**(b*j)`` with Python integers. ``b`` is chosen so no digit sum can wrap:

- SecAgg (:mod:`fedcare.secagg`, the real protocol with masks, Shamir shares and X25519):
  ring Z_2**32, ``b`` the largest with ``sites * (2**b - 1) <= 2**31 - 1``; the unmasked
  ring total is read as int32, exactly;
- CKKS (:mod:`fedcare.he`, TenSEAL, secret key at the sites only): ``2**b - 1`` within
  the parameters' ``max_abs_input``; each decrypted digit sum is within 1e-6 of an
  integer and rounds to it.

What the coordinator still sees: the totals, and each site's suppression lines are kept
at the site (its ``on_release`` record); the coordinator gets only how many sites withheld
each entry (the summed ``:suppressed`` flags). ``per_site`` questions never go through a
secure sum (they are per-site by definition) and are combined in the clear.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.he.params import CkksParams
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.ring import FixedPointRing
from fedcare.secagg.simulate import simulate
from fedcare.stats.disclosure import SUPPRESSED_SUFFIX, site_rules
from fedcare.stats.noise import SiteNoise
from fedcare.stats.protocol import (
    Analysis,
    AnalysisResult,
    Combined,
    DisclosureRules,
    Question,
    Release,
    SiteTable,
    Step,
    Values,
    answer,
    combine,
)

Secure = Literal["none", "secagg", "ckks"]
SECURE_KINDS: tuple[Secure, ...] = ("none", "secagg", "ckks")

FRACTION_BITS = 32
INTEGER_BITS = 64  # |v| < 2**63 per site
_RING_SIGNED_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class LimbCode:
    """Fixed-point values as ``limbs`` digits of ``bits`` bits (the last one signed)."""

    bits: int
    fraction_bits: int = FRACTION_BITS
    integer_bits: int = INTEGER_BITS

    @property
    def limbs(self) -> int:
        return math.ceil((self.fraction_bits + self.integer_bits + 1) / self.bits)

    def encode(self, values: npt.NDArray[np.float64], where: str) -> npt.NDArray[np.float64]:
        """The digits of every value, digit-major: ``[d_0 of all, d_1 of all, ...]``."""
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ConfigError(f"{where}: a secure sum carries finite numbers only, found NaN/inf")
        limit = 2.0 ** (self.integer_bits - 1)
        if v.size and float(np.abs(v).max()) >= limit:
            raise ConfigError(
                f"{where}: value {float(np.abs(v).max()):.6g} is beyond the secure sum's "
                f"range (|v| < 2**{self.integer_bits - 1})"
            )
        scaled = np.rint(np.ldexp(v, self.fraction_bits))
        mask = (1 << self.bits) - 1
        digits = np.empty((self.limbs, v.size), dtype=np.float64)
        if v.size == 0 or float(np.abs(scaled).max()) < 2.0**62:
            # int64 two's complement: a shift past bit 63 gives the sign's bits, as Python's
            # unbounded integers would, so the digits are the same as below.
            q64 = scaled.astype(np.int64)
            for j in range(self.limbs):
                shifted = q64 >> min(self.bits * j, 63)
                digits[j] = shifted if j == self.limbs - 1 else shifted & mask
            return digits.ravel()
        q = [int(x) for x in scaled]
        for j in range(self.limbs - 1):
            digits[j] = [(x >> (self.bits * j)) & mask for x in q]
        digits[-1] = [x >> (self.bits * (self.limbs - 1)) for x in q]  # signed, small
        return digits.ravel()

    def decode(self, digit_sums: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.float64]:
        """The float totals from each digit position's (exact integer) sum."""
        d = np.asarray(digit_sums, dtype=np.int64).reshape(self.limbs, size)
        totals = np.zeros(size, dtype=object)  # Python integers: the sum needs ~100 bits
        for j in range(self.limbs):
            totals = totals + d[j].astype(object) * (1 << (self.bits * j))
        scale = 1 << self.fraction_bits
        return np.array([t / scale for t in totals.tolist()], dtype=np.float64)


Layout = tuple[tuple[str, tuple[int, ...]], ...]
"""A release's keys (sorted) with their shapes: fixed by the question, so sent in the clear."""


def layout_of(release: Release) -> Layout:
    return tuple((k, tuple(np.shape(release.values[k]))) for k in sorted(release.values))


def site_digits(
    release: Release, code: LimbCode, where: str
) -> tuple[Layout, npt.NDArray[np.float64]]:
    """What a site feeds the secure sum: its release's layout and the limb digits of its values."""
    layout = layout_of(release)
    flat = [np.ravel(np.asarray(release.values[k], dtype=np.float64)) for k, _ in layout]
    return layout, code.encode(np.concatenate(flat) if flat else np.zeros(0), where)


def totals_from_digits(layout: Layout, digit_sums: npt.NDArray[np.int64], code: LimbCode) -> Values:
    """The coordinator's side: the summed digits back into the release's named arrays."""
    sizes = [math.prod(shape) for _, shape in layout]
    flat = code.decode(digit_sums, sum(sizes))
    total: Values = {}
    offset = 0
    for (key, shape), n in zip(layout, sizes, strict=True):
        total[key] = flat[offset : offset + n].reshape(shape)
        offset += n
    return total


def limb_code(kind: Secure, sites: int, ckks: CkksParams | None = None) -> LimbCode:
    """The digits' width for a scheme and a number of sites, so no digit sum can wrap."""
    if kind == "secagg":
        return LimbCode(math.floor(math.log2(_RING_SIGNED_LIMIT / sites + 1)))
    params = ckks or CkksParams()
    if sites > params.max_summands:
        raise ConfigError(
            f"CKKS secure sum over {sites} sites, its parameters allow "
            f"{params.max_summands} (max_summands)"
        )
    return LimbCode(math.floor(math.log2(params.max_abs_input + 1)))


@dataclass
class SecureSummer:
    """Sums a question's releases by SecAgg or CKKS; keeps CKKS keys for a whole analysis."""

    kind: Secure
    ckks: CkksParams = field(default_factory=CkksParams)
    _he_site: object | None = field(default=None, repr=False)
    steps: int = 0

    def code(self, sites: int) -> LimbCode:
        return limb_code(self.kind, sites, self.ckks)

    def combine(self, question: Question, releases: Mapping[str, Release]) -> Combined:
        """Like :func:`protocol.combine`, but the coordinator only ever holds totals."""
        if question.combine != "sum" or self.kind == "none":
            return combine(question, releases)
        if len(releases) < 2:
            raise ConfigError(
                f"question '{question.step}': a secure sum needs at least 2 sites, found "
                f"{len(releases)}"
            )
        code = self.code(len(releases))
        sent = {
            site: site_digits(release, code, f"site {site}, question '{question.step}'")
            for site, release in releases.items()
        }
        first = next(iter(sent))
        layout = sent[first][0]
        for site, (theirs, _) in sent.items():
            if theirs != layout:
                raise ProtocolError(
                    f"question '{question.step}': site {site} released {list(theirs)}, "
                    f"site {first} released {list(layout)}"
                )
        digits = {site: vector for site, (_, vector) in sent.items()}
        self.steps += 1
        if not layout or sent[first][1].size == 0:
            sums = np.zeros(0, dtype=np.int64)
        elif self.kind == "secagg":
            sums = self._secagg(question, digits)
        else:
            sums = self._ckks(digits)
        total = totals_from_digits(layout, sums, code)
        return Combined(total=total, suppressed=flag_notes(total))

    def _secagg(
        self, question: Question, digits: Mapping[str, npt.NDArray[np.float64]]
    ) -> npt.NDArray[np.int64]:
        names = sorted(digits)
        ids = tuple(range(len(names)))
        length = next(iter(digits.values())).size
        code = self.code(len(names))
        session = hashlib.sha256(
            f"fedcare/stats/secagg/{question.analysis}/{question.step}/{self.steps}".encode()
        ).digest()
        config = SecAggConfig(
            session_id=session,
            client_ids=ids,
            vector_length=length,
            threshold=len(ids) // 2 + 1,
            ring=FixedPointRing(clip=float((1 << code.bits) - 1), max_clients=len(ids), scale=1.0),
        )
        outcome = simulate(config, {i: digits[name] for i, name in zip(ids, names, strict=True)})
        if outcome.result.included != frozenset(ids):
            raise ProtocolError(
                f"question '{question.step}': the secure sum lost sites "
                f"{sorted(set(ids) - outcome.result.included)}; its totals would be partial"
            )
        return (
            np.asarray(outcome.result.ring_total, dtype=np.uint32).view(np.int32).astype(np.int64)
        )

    def _ckks(self, digits: Mapping[str, npt.NDArray[np.float64]]) -> npt.NDArray[np.int64]:
        from fedcare.he.ckks import generate_keys
        from fedcare.he.secure_sum import HeCoordinator, HeSite

        if self._he_site is None:
            self._he_site = HeSite(generate_keys(self.ckks))  # made at the sites, once
        site = self._he_site
        if not isinstance(site, HeSite):
            raise TypeError("the CKKS summer holds a foreign site object")
        length = next(iter(digits.values())).size
        coordinator = HeCoordinator(site.public_context(), expected_length=length)
        for name, vector in sorted(digits.items()):
            coordinator.receive(site.encrypt_update(vector, 1.0), sender=name)
        summed = site.open_aggregate(coordinator.aggregate()).weighted_sum.astype(np.float64)
        rounded = np.rint(summed)
        if np.abs(summed - rounded).max(initial=0.0) > 0.25:
            raise ProtocolError("CKKS digit sums are not near integers: the sum is corrupt")
        return rounded.astype(np.int64)


def flag_notes(total: Values) -> tuple[str, ...]:
    """What the coordinator may say about suppression when it only sees totals."""
    notes = []
    for key, flags in total.items():
        if key.endswith(SUPPRESSED_SUFFIX) and np.any(flags > 0):
            what = key.removesuffix(SUPPRESSED_SUFFIX)
            notes.append(
                f"'{what}': {int(np.count_nonzero(flags))} of {flags.size} entries withheld by "
                f"at least one site (small cells; under a secure sum only the sites know which)"
            )
    return tuple(notes)


ReleaseRecord = Callable[[str, Question, Release], None]
"""Called with (site, question, release) for every release a site makes (its audit)."""


def run_secure(
    analysis: Analysis,
    tables: Mapping[str, SiteTable],
    rules: Mapping[str, DisclosureRules] | DisclosureRules,
    *,
    plan: DisclosureRules | None = None,
    secure: Secure = "none",
    noise: Mapping[str, SiteNoise] | None = None,
    on_release: ReleaseRecord | None = None,
    ckks: CkksParams | None = None,
) -> AnalysisResult:
    """Drive ``analysis`` like :func:`protocol.run_in_process`, with the options it lacks.

    ``rules``: each site's own rules (a site left out has none of its own); ``plan``: the
    plan's, which a site applies where they are stricter than its own
    (:func:`disclosure.site_rules`; without a plan, a site with no rules gets the defaults);
    ``secure``: how ``sum`` questions are combined (``none``: in the clear); ``noise``: a
    site's DP on its releases, charged to its budget ledger before anything is released;
    ``on_release``: every release, as it leaves its site (with its suppression lines).
    """
    if secure not in SECURE_KINDS:
        raise ConfigError(f"secure must be one of {', '.join(SECURE_KINDS)}, found '{secure}'")
    summer = SecureSummer(secure, ckks or CkksParams())
    index = 0
    step_or_result: Step | AnalysisResult = analysis.start()
    while isinstance(step_or_result, Step):
        step = step_or_result
        releases: dict[str, Release] = {}
        for site, table in tables.items():
            own = rules.get(site) if isinstance(rules, Mapping) else rules
            effective = (own or DisclosureRules()) if plan is None else site_rules(plan, own)
            release = answer(step.question, table, effective)
            if noise is not None and site in noise:
                release = noise[site].apply(step.question, release, index)
            if on_release is not None:
                on_release(site, step.question, release)
            releases[site] = release
        step_or_result = analysis.advance(step, summer.combine(step.question, releases))
        index += 1
    return step_or_result
