"""Model architectures (torch) and the registry that builds them by name or import path."""

from fedcare.models.registry import build_model, model_names

__all__ = ["build_model", "model_names"]
