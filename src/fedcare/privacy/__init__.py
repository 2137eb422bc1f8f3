"""Differential privacy: accounting, noise mechanisms, adaptive clipping, per-site budgets."""
