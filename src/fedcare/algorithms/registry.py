"""Named strategies, as a study config lists them, built from the algorithms' specs.

Every name, default and refusal comes from a declaration: the algorithm's
:class:`~fedcare.algorithms.spec.AlgorithmSpec` (its parameters, server optimizer,
schedule, what stays at the sites, what privacy cannot cover) and the stages' declared
properties (:mod:`fedcare.transforms.declared`). There is no per-name branch here, so an
algorithm registered by a plug-in is built exactly like a built-in one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fedcare.algorithms.aggregate import Weighting
from fedcare.algorithms.personal import Personalisation
from fedcare.algorithms.plugin import AlgorithmRegistry, algorithms
from fedcare.algorithms.robust import build_robust_aggregator
from fedcare.algorithms.server_optim import ServerOptimizer
from fedcare.algorithms.spec import COMMON_PARAMS, AlgorithmSpec, CommonParams
from fedcare.algorithms.strategy import Strategy
from fedcare.core.errors import ConfigError
from fedcare.privacy.spec import parse_dp, parse_sample_dp
from fedcare.transforms.declared import aggregation_stage, algorithm_stage, check_declared
from fedcare.transforms.pipeline import UploadPipeline, parse_stages
from fedcare.transforms.secure import parse_secure


def strategy_names() -> list[str]:
    return algorithms().names()


def build_strategy(
    name: str, params: Mapping[str, Any] | None = None, *, label: str | None = None
) -> Strategy:
    """Build a strategy by name; unknown names and parameters are a ConfigError."""
    params = dict(params or {})
    registry = algorithms()
    key = name.lower()
    spec = registry.get(key)
    if spec is None:
        raise ConfigError(
            f"unknown strategy '{name}'; known strategies: {', '.join(registry.names())}"
        )
    _check_param_names(name, key, spec, params, registry)
    try:
        common = CommonParams.model_validate(params)
        own = spec.parse_params(params)
    except ValidationError as exc:
        raise ConfigError(f"strategy '{name}': {_validation_message(exc)}") from None
    momentum = spec.server_momentum if common.server_momentum is None else common.server_momentum
    if momentum and spec.server_optimizer != "sgd":
        raise ConfigError(
            f"strategy '{name}': server_momentum applies to sgd-based strategies only"
        )
    if common.weighting not in ("samples", "uniform"):
        raise ConfigError(
            f"strategy '{name}': weighting must be 'samples' or 'uniform', found '{common.weighting}'"
        )
    weighting: Weighting = "uniform" if common.weighting == "uniform" else "samples"
    try:
        optimizer = ServerOptimizer(
            name=spec.server_optimizer,
            lr=spec.server_lr if common.server_lr is None else common.server_lr,
            momentum=momentum,
            beta1=common.beta1,
            beta2=common.beta2,
            tau=common.tau,
        )
        personal = Personalisation(
            kind=spec.personal, finetune_epochs=common.finetune_epochs, **spec.personal_params(own)
        )
    except ValueError as exc:
        raise ConfigError(f"strategy '{name}': {exc}") from exc
    aggregator, aggregator_params = common.aggregator, dict(common.aggregator_params)
    try:
        build_robust_aggregator(aggregator, **aggregator_params)  # unknown rules fail here
    except ValueError as exc:
        raise ConfigError(f"strategy '{name}': {exc}") from exc
    if aggregator != "mean" and spec.refuses_robust:
        raise ConfigError(f"strategy '{name}': robust aggregation does not apply to {key}")
    raw_stages = params.get("upload", [])
    if not isinstance(raw_stages, list):
        raise ConfigError(
            f"strategy '{name}': 'upload' must be a list of stages, found {raw_stages!r}"
        )
    stages = parse_stages(raw_stages, where=f"strategy '{name}' upload")
    if stages and spec.passes_models:
        raise ConfigError(
            f"strategy '{name}': cyclic training passes models, not updates; upload stages do not apply"
        )
    dp = parse_dp(params["dp"], where=f"strategy '{name}' dp") if params.get("dp") else None
    secure = (
        parse_secure(params["secure"], where=f"strategy '{name}' secure")
        if params.get("secure")
        else None
    )
    sample_dp = (
        parse_sample_dp(params["sample_dp"], where=f"strategy '{name}' sample_dp")
        if params.get("sample_dp") is not None
        else None
    )
    # The per-update stages, then the noise, then the secure sum, then the aggregation:
    # the order the update takes from the site to the new global model.
    check_declared(
        [
            algorithm_stage(key, spec.not_private),
            *(s.declared for s in stages),
            *((dp.declared,) if dp else ()),
            *((secure.declared,) if secure else ()),
            aggregation_stage(aggregator),
        ],
        where=f"strategy '{name}'",
    )
    if sample_dp is not None:
        _check_sample_dp(name, key, spec, personal.finetune_epochs)
    return Strategy(
        name=label or key,
        dp=dp,
        sample_dp=sample_dp,
        secure=secure,
        personal=personal,
        aggregator=aggregator,
        aggregator_params=aggregator_params,
        upload=UploadPipeline(stages),
        client=spec.client(own),
        server_optimizer=optimizer,
        weighting=weighting,
        schedule=spec.schedule,
    )


def _check_param_names(
    name: str,
    key: str,
    spec: AlgorithmSpec[Any],
    params: Mapping[str, Any],
    registry: AlgorithmRegistry,
) -> None:
    """Unknown parameters, and another algorithm's parameters, are refused by name."""
    allowed = COMMON_PARAMS | registry.own_params()
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(
            f"strategy '{name}': unknown parameter(s) {unknown}; allowed: {sorted(allowed)}"
        )
    misplaced = sorted(set(params) - COMMON_PARAMS - spec.param_names)
    if misplaced:
        owners = registry.param_owners(misplaced[0])
        owner = registry.get(owners[0]) if len(owners) == 1 else None
        together = sorted(owner.param_names) if owner else [misplaced[0]]
        quoted = "/".join(f"'{p}'" for p in together)
        verb = "applies" if len(together) == 1 else "apply"
        raise ConfigError(f"strategy '{name}': {quoted} only {verb} to {', '.join(owners)}")


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as 'parameter': what was expected, found what."""
    return "; ".join(
        f"parameter '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}, found {err['input']!r}"
        for err in exc.errors()
    )


def _check_sample_dp(name: str, key: str, spec: AlgorithmSpec[Any], finetune: int) -> None:
    """Refuse sample-level DP-SGD where rows would reach a result outside its steps.

    Everything the coordinator derives from DP-SGD models (FedProx's and SCAFFOLD's local
    objectives, control variates, robust rules, compression, client-level ``dp``, ``secure``)
    is post-processing and keeps each site's epsilon; epochs and steps both work (each
    site's steps per round are ``local.steps_for(n_k)`` at q = batch_size / n_k).
    """
    if spec.not_sample_private is not None:
        raise ConfigError(
            f"strategy '{name}': sample_dp (DP-SGD) does not apply to {key}: "
            f"{spec.not_sample_private}"
        )
    if finetune:
        raise ConfigError(
            f"strategy '{name}': sample_dp (DP-SGD) covers federated training only; "
            f"finetune_epochs ({finetune}) trains the final model on each site's rows "
            "without it; drop finetune_epochs"
        )
