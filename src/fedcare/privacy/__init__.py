"""Differential privacy: accounting, noise mechanisms, adaptive clipping, per-site budgets.

numpy and dp-accounting only (no torch); sample-level DP-SGD lives in ``fedcare.ml.dp_sgd``.
"""

from fedcare.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier
from fedcare.privacy.adaptive_clip import AdaptiveClipConfig, AdaptiveClipNorm
from fedcare.privacy.budget import BudgetLedger, JobRef, LedgerIntegrityError, PrivacyBudget
from fedcare.privacy.mechanisms import (
    CentralDPFedAvg,
    DistributedDPFedAvg,
    DistributedNoiseShare,
    LocalDPGaussian,
    l2_clip,
)

__all__ = [
    "AdaptiveClipConfig",
    "AdaptiveClipNorm",
    "BudgetLedger",
    "CentralDPFedAvg",
    "DistributedDPFedAvg",
    "DistributedNoiseShare",
    "JobRef",
    "LedgerIntegrityError",
    "LocalDPGaussian",
    "PrivacyAccountant",
    "PrivacyBudget",
    "calibrate_noise_multiplier",
    "l2_clip",
]
