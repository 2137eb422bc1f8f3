"""Build a model by registered name or by a user's import path ``package.module:ClassName``.

A user model is constructed as ``Class(input_shape=..., num_outputs=..., **params)``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from fedcare.core.errors import ConfigError
from fedcare.models.cnn import SmallCNN
from fedcare.models.logistic import LogisticRegression
from fedcare.models.mlp import MLP

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "logistic": LogisticRegression,
    "mlp": MLP,
    "cnn": SmallCNN,
}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def num_outputs_for(num_classes: int) -> int:
    """Binary tasks use one logit; multiclass one per class."""
    return 1 if num_classes == 2 else num_classes


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **params: Any
) -> nn.Module:
    """Instantiate a model; raise ConfigError naming the model and the problem otherwise."""
    factory = _resolve(name)
    try:
        model = factory(
            input_shape=tuple(input_shape), num_outputs=num_outputs_for(num_classes), **params
        )
    except TypeError as exc:
        raise ConfigError(
            f"model '{name}': cannot build it with parameters {params}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model '{name}' did not build a torch.nn.Module (found {type(model).__name__})"
        )
    return model


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown model '{name}'{hint} Known models: {', '.join(model_names())}, "
            "or an import path 'package.module:ClassName'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model '{name}': cannot import module '{module_name}': {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"model '{name}': module '{module_name}' has no callable '{attr}'")
    return factory
