"""What each stage an update passes through declares, and the one checker over them.

An update goes from a site's training to the new global model through stages: the
algorithm's own upload, the per-update stages (clip, quantize, top-k), the DP noise, the
secure sum (SecAgg masking or CKKS encryption) and the coordinator's aggregation. Each
declares, as data, what it keeps and what it needs:

* ``not_linear`` / ``not_dense``: why its outputs cannot be summed before decoding, or are
  not a dense vector (None: they can, they are);
* ``sum_only``: after it the coordinator sees only the sum (how it hides each update);
  such a stage needs every stage before it to be linear and dense;
* ``needs_each_update``: it must see every update on its own, so no sum-only stage may
  come before it;
* ``needs_sum_only``: a sum-only stage must come after it (a share of noise is private
  only once summed);
* ``needs_sum_aggregation``: the aggregation must be a sum (noise calibrated to a
  clipped sum);
* ``covers``: it protects the update (DP, a secure sum), which the algorithm's upload must
  allow (``not_coverable``: why not);
* ``group`` / ``last``: at most one stage of a group per pipeline; must come last;
* ``at_coordinator``: it runs at the coordinator (central DP, the aggregation), after
  every stage that runs at the sites.

:func:`check_declared` derives every refusal from these declarations, with the reason the
declaring stage gives. Adding a stage means declaring it; the checker does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedcare.core.errors import ConfigError


@dataclass(frozen=True)
class Group:
    """Stages of which a pipeline holds at most one, and why one is enough."""

    name: str
    why_one: str


COMPRESSION = Group(
    "compression", "top-k values are already float32 and quantising them again gains little"
)
COMPRESSION_LAST = "clipping after compression would change what was encoded"


@dataclass(frozen=True)
class Declared:
    """One stage's declared properties (see the module docstring).

    Templates (``needs_each_update``, ``needs_sum_aggregation``) are formatted with the
    other stage's fields: ``{kind}``, ``{label}`` and ``{hides}`` of the sum-only stage,
    ``{aggregator}`` of the aggregation.
    """

    name: str  # as configured: "topk", "secure_aggregation", "median", ...
    title: str  # in messages: "top-k sparsification"
    label: str = ""  # short display name, e.g. "SecAgg+"; defaults to the title
    group: Group | None = None
    last: str | None = None  # must be the last upload stage: why
    not_linear: str | None = None
    not_dense: str | None = None
    sum_only: str | None = None  # how it hides each update: "secure aggregation masks"
    needs_each_update: str | None = None
    needs_sum_only: str | None = None
    needs_sum_aggregation: str | None = None
    at_coordinator: bool = False  # runs at the coordinator, after every site-side stage
    aggregation: bool = False  # the coordinator's aggregation (the chain's last stage)
    sums: bool = False  # an aggregation that is a (weighted) sum of the updates
    covers: str | None = None  # what it protects the update with: "differential privacy"
    not_coverable: str | None = None

    @property
    def shown(self) -> str:
        return self.label or self.title


def aggregation_stage(aggregator: str) -> Declared:
    """The coordinator's aggregation: the weighted mean, or a robust rule."""
    if aggregator == "mean":
        return Declared(
            name="mean", title="the weighted mean", at_coordinator=True, aggregation=True, sums=True
        )
    return Declared(
        name=aggregator,
        title=f"robust aggregation '{aggregator}'",
        at_coordinator=True,
        aggregation=True,
        needs_each_update=f"robust aggregation '{aggregator}' cannot run over {{kind}}: "
        "{hides} each site's update so the coordinator only ever sees the sum, but a robust "
        "rule must look at every update on its own (to take medians, trim or compare "
        "distances). Use norm-bounding clip before {kind}, or drop one of the two.",
    )


def algorithm_stage(name: str, not_private: str | None) -> Declared:
    """The algorithm's own upload, first in the chain: what it lets DP and secure sums cover."""
    return Declared(name=name, title=name, not_coverable=not_private)


def check_order(stages: Sequence[Declared], *, where: str) -> None:
    """The upload stages' group and position rules (the list as configured)."""
    for group in dict.fromkeys(s.group for s in stages if s.group is not None):
        members = [s.name for s in stages if s.group == group]
        if len(members) > 1:
            raise ConfigError(
                f"{where}: at most one {group.name} stage per pipeline, found {members}; "
                f"{group.why_one}"
            )
    for i, stage in enumerate(stages):
        if stage.last is not None and i != len(stages) - 1:
            role = f"{stage.group.name} stage" if stage.group else "stage"
            raise ConfigError(f"{where}: the {role} '{stage.name}' must come last; {stage.last}")


def check_declared(stages: Sequence[Declared], *, where: str | None = None) -> None:
    """Refuse a chain of stages that cannot work together.

    ``stages`` are in the order they run at the site; coordinator-side stages (central
    DP, the aggregation) are moved after them. The message is the declaring stage's
    reason, prefixed with ``where`` when given.
    """
    problem = _first_problem(sorted(stages, key=lambda s: s.at_coordinator), stages)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}" if where else problem)


def _first_problem(stages: Sequence[Declared], configured: Sequence[Declared]) -> str | None:
    """The first refusal, in a fixed order: what the aggregation needs, what a secure sum
    needs, what the algorithm allows, what the noise needs. ``configured`` is the chain in
    the order given (the first protection it names is the one a message names)."""
    sum_at = [i for i, s in enumerate(stages) if s.sum_only is not None]
    aggregation = [i for i, s in enumerate(stages) if s.aggregation]
    others = [i for i, s in enumerate(stages) if not s.aggregation]
    problem = _hidden_updates(stages, aggregation, sum_at)
    if problem is not None:
        return problem
    for j in sum_at:  # every stage before a sum-only one must be dense and linear
        for stage in stages[:j]:
            why = stage.not_dense or stage.not_linear
            if why is not None:
                return f"{stage.title} cannot run under {stages[j].name}: {why}"
    for i, stage in enumerate(configured):  # what the algorithm's upload lets a stage cover
        covering = [s.covers for s in configured[i + 1 :] if s.covers is not None]
        if stage.not_coverable is not None and covering:
            return f"{covering[0]} does not apply to {stage.name}: {stage.not_coverable}"
    for i, stage in enumerate(stages):
        if stage.needs_sum_only is not None and not any(j > i for j in sum_at):
            return stage.needs_sum_only
    problem = _hidden_updates(stages, others, sum_at)
    if problem is not None:
        return problem
    for i, stage in enumerate(stages):
        template = stage.needs_sum_aggregation
        final = next((s for s in stages[i + 1 :] if s.aggregation), None)
        if template is not None and final is not None and not final.sums:
            return template.format(aggregator=final.name)
    return None


def _hidden_updates(stages: Sequence[Declared], which: list[int], sum_at: list[int]) -> str | None:
    """A stage among ``which`` that must see each update, after a sum-only stage."""
    for i in which:
        template = stages[i].needs_each_update
        hiding = [stages[j] for j in sum_at if j < i]
        if template is not None and hiding:
            h = hiding[0]
            return template.format(kind=h.name, label=h.shown, hides=h.sum_only)
    return None
