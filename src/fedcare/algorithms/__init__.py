"""Federated algorithms: pure server and client halves over flat vectors."""

from fedcare.algorithms.registry import build_strategy, strategy_names
from fedcare.algorithms.strategy import Strategy

__all__ = ["Strategy", "build_strategy", "strategy_names"]
