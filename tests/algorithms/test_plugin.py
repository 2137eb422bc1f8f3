"""The algorithm registry: built-ins from their modules' specs, plug-ins from entry points,
and a clear error naming the entry point for every broken plug-in."""

import ast
import inspect
from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel

from fedcare.algorithms import plugin, registry
from fedcare.algorithms.fedavg import fedavg_client
from fedcare.algorithms.plugin import AlgorithmRegistry, load_registry
from fedcare.algorithms.qfedavg import QFedAvgParams, qfedavg_client
from fedcare.algorithms.spec import AlgorithmSpec, NoParams
from fedcare.core.errors import ConfigError

GROUP = "fedcare.algorithms"


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_every_built_in_algorithm_comes_from_the_spec_its_module_declares():
    built_in = load_registry([])
    assert built_in.names() == [
        "cyclic", "ditto", "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedbn", "fedper",
        "fedprox", "fedsgd", "fedyogi", "mocha", "qfedavg", "scaffold",
    ]  # fmt: skip
    assert built_in.source("fedadam") == "fedcare.algorithms.fedavg"
    assert built_in.source("ditto") == "fedcare.algorithms.personal"
    assert built_in.param_owners("mu") == ["fedprox"]
    assert built_in.own_params() == {"mu", "q", "ditto_lambda", "lambda1", "lambda2"}


def test_the_registry_names_no_algorithm():
    """build_strategy reads specs only: no strategy name appears as a literal in it."""
    source = inspect.getsource(registry)
    literals = {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert not literals & set(registry.strategy_names())


def test_a_plugin_that_is_not_a_spec_is_refused_naming_its_entry_point():
    with pytest.raises(ConfigError) as err:
        load_registry([entry_point("toy", "tests.algorithms.fedcap_plugin:FedCapParams")])
    message = str(err.value)
    assert "entry point 'toy = tests.algorithms.fedcap_plugin:FedCapParams'" in message
    assert "expected a fedcare.algorithms.spec.AlgorithmSpec, found ModelMetaclass" in message


def test_a_plugin_with_a_malformed_spec_is_refused_naming_its_entry_point():
    with pytest.raises(ConfigError) as err:
        load_registry([entry_point("broken", "tests.algorithms.broken_plugin:SPEC")])
    message = str(err.value)
    assert "entry point 'broken = tests.algorithms.broken_plugin:SPEC'" in message
    assert "could not be loaded" in message
    assert "every parameter needs a default, found none for ['strength']" in message


def test_a_plugin_that_cannot_be_imported_is_refused_naming_its_entry_point():
    with pytest.raises(ConfigError, match=r"entry point 'gone = fedcare_gone:SPEC'.*No module"):
        load_registry([entry_point("gone", "fedcare_gone:SPEC")])


def test_a_name_clash_is_refused_naming_both_sources():
    clash = entry_point("mine", "tests.algorithms.fedcap_plugin:SPEC")
    with pytest.raises(ConfigError) as err:
        load_registry([clash, entry_point("theirs", "tests.algorithms.fedcap_plugin:SPEC")])
    assert (
        "entry point 'theirs = tests.algorithms.fedcap_plugin:SPEC' (group fedcare.algorithms): "
        "algorithm 'fedcap' is already registered by entry point 'mine = "
    ) in str(err.value)
    names = AlgorithmRegistry()
    names.register_all(AlgorithmSpec(name="fedavg", client=fedavg_client), source="pkg")
    with pytest.raises(ConfigError, match="pkg: algorithm 'fedavg' is already registered by pkg"):
        names.register(AlgorithmSpec(name="fedavg", client=fedavg_client), source="pkg")


def test_declared_hooks_must_match_the_client_rule():
    loss = AlgorithmSpec(name="lossy", client=fedavg_client, hooks=frozenset({"start_loss"}))
    with pytest.raises(ConfigError, match="'lossy' declares the 'start_loss' hook"):
        AlgorithmRegistry().register(loss, source="pkg")
    silent = AlgorithmSpec(name="silent", client=qfedavg_client, params=QFedAvgParams)
    with pytest.raises(ConfigError, match="'silent' does not declare the 'start_loss' hook"):
        AlgorithmRegistry().register(silent, source="pkg")


class Shadowing(BaseModel):
    dp: float = 1.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Fed Avg"}, "name must be lowercase"),
        ({"params": Shadowing}, "parameter(s) ['dp'] are common to every strategy"),
        ({"params": dict}, "params must be a pydantic model class"),
        ({"server_optimizer": "lion"}, "server_optimizer must be one of"),
        ({"server_lr": 0.0}, "server_lr must be > 0"),
        ({"server_momentum": 1.0}, "server_momentum must be in [0, 1)"),
        ({"schedule": "async"}, "schedule must be one of ('parallel', 'cyclic')"),
        ({"personal": "fedrep"}, "personal must be one of"),
        ({"hooks": frozenset({"teleport"})}, "unknown hook(s) ['teleport']"),
    ],
)
def test_a_malformed_spec_says_which_field_is_wrong(fields, message):
    with pytest.raises(ValueError, match="algorithm spec") as err:
        AlgorithmSpec(**{"name": "toy", "client": fedavg_client, **fields})
    assert message in str(err.value)


def test_variants_are_specs_over_fedavgs_client_rule():
    built_in = load_registry([])
    for name, optimizer, lr, momentum in [
        ("fedavgm", "sgd", 1.0, 0.9),
        ("fedadam", "adam", 0.01, 0.0),
        ("fedyogi", "yogi", 0.01, 0.0),
        ("fedadagrad", "adagrad", 0.01, 0.0),
    ]:
        spec = built_in.get(name)
        assert spec is not None and spec.client is fedavg_client and spec.params is NoParams
        strategy = registry.build_strategy(name)
        assert (strategy.server_optimizer.name, strategy.server_optimizer.lr) == (optimizer, lr)
        assert strategy.server_optimizer.momentum == momentum


def test_the_process_registry_is_loaded_once_and_reloads_on_request(monkeypatch):
    assert plugin.algorithms() is plugin.algorithms()
    monkeypatch.setattr(
        plugin,
        "plugin_entry_points",
        lambda: [entry_point("fedcap", "tests.algorithms.fedcap_plugin:SPEC")],
    )
    try:
        assert "fedcap" in plugin.reload_algorithms().names()
    finally:
        monkeypatch.undo()
        assert "fedcap" not in plugin.reload_algorithms().names()


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fedprox", {"mu": "strong"}, "strategy 'fedprox': parameter 'mu': Input should be a valid number"),
        ("fedavg", {"server_lr": "fast"}, "strategy 'fedavg': parameter 'server_lr': Input should be a valid number"),
        ("ditto", {"finetune_epochs": 2.5}, "parameter 'finetune_epochs': Input should be a valid integer"),
        ("fedavg", {"aggregator_params": [1]}, "parameter 'aggregator_params': Input should be a valid dictionary"),
        ("fedavg", {"lambda2": 0.1}, "strategy 'fedavg': 'lambda1'/'lambda2' only apply to mocha"),
    ],
)  # fmt: skip
def test_parameters_of_the_wrong_type_or_algorithm_are_named(name, params, message):
    with pytest.raises(ConfigError) as err:
        registry.build_strategy(name, params)
    assert message in str(err.value)


def test_a_client_rule_missing_protocol_methods_is_refused():
    class HalfRule:
        name = "half"

        def finish(self, *args: object) -> None: ...

    spec = AlgorithmSpec(name="half", client=lambda params: HalfRule())
    with pytest.raises(ConfigError) as err:
        AlgorithmRegistry().register(spec, source="pkg")
    assert "pkg: algorithm 'half': the client rule HalfRule lacks ['check_spec'" in str(err.value)
