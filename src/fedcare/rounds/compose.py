"""The round's aggregator, composed from what the strategy declares.

The one place that reads the strategy's aggregation declarations (robust rule, client-level
DP, secure sum); every driver gets its aggregator here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcare.algorithms.strategy import Strategy
from fedcare.core.errors import ConfigError
from fedcare.privacy.client_level import PrivateRounds
from fedcare.rounds.aggregators import (
    Aggregator,
    MeanAggregator,
    PrivateAggregator,
    RobustAggregator,
    SecureSumAggregator,
)
from fedcare.rounds.secure import SecureSummer


@dataclass(frozen=True)
class AggregationServices:
    """What the driver lends the round's aggregation.

    ``privacy``: the run's client-level DP state (accountants, clip norm, noise stream),
    required when the strategy has ``dp``; ``summer``: the party that runs the strategy's
    secure sum in process (None where the protocol runs between machines); ``weight_scale``:
    the public bound on any site's aggregation weight (secure sums carry
    ``w / weight_scale``).
    """

    privacy: PrivateRounds | None = None
    summer: SecureSummer | None = None
    weight_scale: float = 1.0


def new_aggregator(
    strategy: Strategy,
    size: int,
    *,
    round_index: int,
    cohort: int,
    services: AggregationServices | None = None,
) -> Aggregator:
    """A fresh aggregator for round ``round_index`` (1-based) over ``cohort`` sampled sites.

    Opens the DP round (it keys the noise) when the run has client-level DP.
    """
    services = services or AggregationServices()
    rule = strategy.robust_rule()
    privacy, secure = services.privacy, strategy.secure is not None
    if (strategy.dp is None) != (privacy is None):
        raise ConfigError(
            f"strategy '{strategy.name}': client-level DP is "
            f"{'on' if strategy.dp else 'off'} but the driver "
            f"{'lent' if privacy else 'did not lend'} the run's DP state"
        )
    if rule is not None and (privacy is not None or secure):
        raise ConfigError(
            f"strategy '{strategy.name}': the robust rule '{strategy.aggregator}' needs every "
            "update in the clear; it cannot run under differential privacy or a secure sum"
        )
    if privacy is not None:
        privacy.start_round(round_index, size)
    if secure:
        return SecureSumAggregator(
            size, services.summer, round_index, cohort, services.weight_scale, privacy
        )
    if privacy is not None:
        return PrivateAggregator(size, privacy, round_index, cohort)
    if rule is not None:
        return RobustAggregator(size, rule)
    return MeanAggregator(size)
