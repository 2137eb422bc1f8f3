"""Named strategies, as a study config lists them.

``fedadam`` is FedAvg's client rule with the Adam server optimizer, ``fedavgm`` FedAvg with
server momentum, and so on: composition, never a subclass per combination.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedcare.algorithms.aggregate import Weighting
from fedcare.algorithms.client_rule import ClientRule
from fedcare.algorithms.fedavg import FedAvgClient
from fedcare.algorithms.fedprox import FedProxClient
from fedcare.algorithms.fedsgd import FedSGDClient
from fedcare.algorithms.personal import Personalisation, PersonalKind
from fedcare.algorithms.qfedavg import QFedAvgClient
from fedcare.algorithms.robust import build_robust_aggregator
from fedcare.algorithms.scaffold import ScaffoldClient
from fedcare.algorithms.server_optim import ServerOptimizer, ServerOptimizerName
from fedcare.algorithms.strategy import Schedule, Strategy
from fedcare.core.errors import ConfigError
from fedcare.privacy.spec import DPSpec, SampleDPSpec, parse_dp, parse_sample_dp
from fedcare.transforms.pipeline import Stage, UploadPipeline, check_combination, parse_stages
from fedcare.transforms.secure import SecureSpec, parse_secure

# name -> (client rule factory, server optimizer name, default server lr, schedule)
_TABLE: dict[
    str, tuple[Callable[[Mapping[str, Any]], ClientRule], ServerOptimizerName, float, Schedule]
] = {
    "fedavg": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
    "fedavgm": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
    "fedadam": (lambda p: FedAvgClient(), "adam", 0.01, "parallel"),
    "fedyogi": (lambda p: FedAvgClient(), "yogi", 0.01, "parallel"),
    "fedadagrad": (lambda p: FedAvgClient(), "adagrad", 0.01, "parallel"),
    "fedprox": (lambda p: FedProxClient(mu=float(p.get("mu", 0.01))), "sgd", 1.0, "parallel"),
    "scaffold": (lambda p: ScaffoldClient(), "sgd", 1.0, "parallel"),
    "fedsgd": (lambda p: FedSGDClient(), "sgd", 0.1, "parallel"),
    "cyclic": (lambda p: FedAvgClient(), "sgd", 1.0, "cyclic"),
    "qfedavg": (lambda p: QFedAvgClient(q=float(p.get("q", 1.0))), "sgd", 1.0, "parallel"),
    "fedper": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
    "fedbn": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
    "ditto": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
    "mocha": (lambda p: FedAvgClient(), "sgd", 1.0, "parallel"),
}
_PERSONAL: dict[str, PersonalKind] = {
    "fedper": "fedper",
    "fedbn": "fedbn",
    "ditto": "ditto",
    "mocha": "mocha",
}

_PARAMS = {
    "server_lr",
    "server_momentum",
    "beta1",
    "beta2",
    "tau",
    "weighting",
    "mu",
    "q",
    "ditto_lambda",
    "finetune_epochs",
    "lambda1",
    "lambda2",
    "aggregator",
    "aggregator_params",
    "upload",
    "dp",
    "sample_dp",
    "secure",
}


# Strategies whose uploads carry more than one averaged delta (control variates, q-FedAvg's
# own weights, MOCHA's models, cyclic's model hand-over): DP and secure summation cover the
# delta only, so these are refused rather than half-protected.
_NOT_PRIVATE = {
    "scaffold": "its control variates travel beside the update, unclipped and in the clear",
    "qfedavg": "each site sends its own loss-based weight, which DP-FedAvg does not bound",
    "mocha": "the coordinator needs every site's model to learn the task relationship",
    "cyclic": "sites hand the model to each other instead of sending updates to sum",
}


def _check_privacy(
    name: str,
    key: str,
    dp: DPSpec | None,
    secure: SecureSpec | None,
    aggregator: str,
    stages: tuple[Stage, ...],
) -> None:
    """Refuse privacy settings that cannot work together, saying why."""
    check_combination(stages, aggregator=aggregator, secure=secure.kind if secure else None)
    if (dp or secure) and key in _NOT_PRIVATE:
        what = "differential privacy" if dp else secure.label if secure else ""
        raise ConfigError(f"strategy '{name}': {what} does not apply to {key}: {_NOT_PRIVATE[key]}")
    if dp is None:
        return
    if dp.mode == "distributed" and secure is None:
        raise ConfigError(
            f"strategy '{name}': distributed DP adds only a share of the noise at each site, "
            f"so the coordinator must see only the sum; add secure: secure_aggregation (or encrypt)"
        )
    if dp.mode == "central" and secure is not None:
        raise ConfigError(
            f"strategy '{name}': central DP clips each update at the coordinator, which "
            f"{secure.label} prevents; use dp mode 'distributed' with secure summation"
        )
    if aggregator != "mean":
        raise ConfigError(
            f"strategy '{name}': DP-FedAvg's noise is calibrated to a clipped sum; robust rule "
            f"'{aggregator}' changes the sensitivity, so the epsilon would be wrong"
        )


# Strategies whose sites train or report something from their rows outside the DP-SGD
# steps: sample-level DP would not cover it, so they are refused.
_NOT_SAMPLE_PRIVATE = {
    "qfedavg": "each site reports its loss at the global model on its training rows (its "
    "q-FedAvg weight), computed without noise",
    "ditto": "each site trains its personal model in a second pass outside DP-SGD and "
    "reports that model's results",
    "mocha": "each site's own model is trained outside DP-SGD and sent to the coordinator",
    "fedbn": "it keeps batch-norm layers at the sites, and DP-SGD cannot train models with "
    "batch-norm statistics (they mix rows within a batch)",
}


def _check_sample_dp(name: str, key: str, sample_dp: SampleDPSpec | None, finetune: int) -> None:
    """Refuse sample-level DP-SGD where rows would reach a result outside its steps.

    Everything the coordinator derives from DP-SGD models (FedProx's and SCAFFOLD's local
    objectives, control variates, robust rules, compression, client-level ``dp``, ``secure``)
    is post-processing and keeps each site's epsilon; epochs and steps both work (each
    site's steps per round are ``local.steps_for(n_k)`` at q = batch_size / n_k).
    """
    if sample_dp is None:
        return
    if key in _NOT_SAMPLE_PRIVATE:
        raise ConfigError(
            f"strategy '{name}': sample_dp (DP-SGD) does not apply to {key}: "
            f"{_NOT_SAMPLE_PRIVATE[key]}"
        )
    if finetune:
        raise ConfigError(
            f"strategy '{name}': sample_dp (DP-SGD) covers federated training only; "
            f"finetune_epochs ({finetune}) trains the final model on each site's rows "
            "without it; drop finetune_epochs"
        )


def strategy_names() -> list[str]:
    return sorted(_TABLE)


def build_strategy(
    name: str, params: Mapping[str, Any] | None = None, *, label: str | None = None
) -> Strategy:
    """Build a strategy by name; unknown names and parameters are a ConfigError."""
    params = dict(params or {})
    key = name.lower()
    if key not in _TABLE:
        raise ConfigError(
            f"unknown strategy '{name}'; known strategies: {', '.join(strategy_names())}"
        )
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise ConfigError(
            f"strategy '{name}': unknown parameter(s) {unknown}; allowed: {sorted(_PARAMS)}"
        )
    if "mu" in params and key != "fedprox":
        raise ConfigError(f"strategy '{name}': 'mu' only applies to fedprox")
    if "q" in params and key != "qfedavg":
        raise ConfigError(f"strategy '{name}': 'q' only applies to qfedavg")
    if ("lambda1" in params or "lambda2" in params) and key != "mocha":
        raise ConfigError(f"strategy '{name}': 'lambda1'/'lambda2' only apply to mocha")
    if "ditto_lambda" in params and key != "ditto":
        raise ConfigError(f"strategy '{name}': 'ditto_lambda' only applies to ditto")
    rule_factory, opt_name, default_lr, schedule = _TABLE[key]
    momentum = float(params.get("server_momentum", 0.9 if key == "fedavgm" else 0.0))
    if momentum and opt_name != "sgd":
        raise ConfigError(
            f"strategy '{name}': server_momentum applies to sgd-based strategies only"
        )
    weighting: Weighting = params.get("weighting", "samples")
    if weighting not in ("samples", "uniform"):
        raise ConfigError(
            f"strategy '{name}': weighting must be 'samples' or 'uniform', found '{weighting}'"
        )
    try:
        optimizer = ServerOptimizer(
            name=opt_name,
            lr=float(params.get("server_lr", default_lr)),
            momentum=momentum,
            beta1=float(params.get("beta1", 0.9)),
            beta2=float(params.get("beta2", 0.99)),
            tau=float(params.get("tau", 1e-3)),
        )
    except ValueError as exc:
        raise ConfigError(f"strategy '{name}': {exc}") from exc
    try:
        personal = Personalisation(
            kind=_PERSONAL.get(key),
            ditto_lambda=float(params.get("ditto_lambda", 0.1)),
            finetune_epochs=int(params.get("finetune_epochs", 0)),
            mocha_lambda1=float(params.get("lambda1", 0.1)),
            mocha_lambda2=float(params.get("lambda2", 0.01)),
        )
    except ValueError as exc:
        raise ConfigError(f"strategy '{name}': {exc}") from exc
    aggregator = str(params.get("aggregator", "mean"))
    aggregator_params = dict(params.get("aggregator_params", {}))
    try:
        build_robust_aggregator(aggregator, **aggregator_params)  # unknown rules fail here
    except ValueError as exc:
        raise ConfigError(f"strategy '{name}': {exc}") from exc
    if aggregator != "mean" and key in ("qfedavg", "cyclic"):
        raise ConfigError(f"strategy '{name}': robust aggregation does not apply to {key}")
    raw_stages = params.get("upload", [])
    if not isinstance(raw_stages, list):
        raise ConfigError(
            f"strategy '{name}': 'upload' must be a list of stages, found {raw_stages!r}"
        )
    stages = parse_stages(raw_stages, where=f"strategy '{name}' upload")
    if stages and key == "cyclic":
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
    _check_privacy(name, key, dp, secure, aggregator, stages)
    _check_sample_dp(name, key, sample_dp, personal.finetune_epochs)
    return Strategy(
        name=label or key,
        dp=dp,
        sample_dp=sample_dp,
        secure=secure,
        personal=personal,
        aggregator=aggregator,
        aggregator_params=aggregator_params,
        upload=UploadPipeline(stages),
        client=rule_factory(params),
        server_optimizer=optimizer,
        weighting=weighting,
        schedule=schedule,
    )
