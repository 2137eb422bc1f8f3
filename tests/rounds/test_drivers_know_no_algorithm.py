"""The simulator drives every algorithm through the round core and the strategy's hooks:
it imports no algorithm module and names no algorithm (import-linter enforces the
imports too; this also catches a name compared as a string)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedcare.sim
from fedcare.algorithms.registry import build_strategy, strategy_names

ALGORITHM_MODULES = {
    f"fedcare.algorithms.{m}"
    for m in ("fedavg", "fedprox", "fedsgd", "scaffold", "qfedavg", "mocha", "personal", "robust")
}


def driver_sources() -> list[Path]:
    return sorted(Path(fedcare.sim.__file__).parent.rglob("*.py"))


def test_the_simulator_imports_no_algorithm_module():
    for path in driver_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in ALGORITHM_MODULES, f"{path.name} imports {node.module}"


def test_the_simulator_names_no_algorithm():
    # "cyclic" is also the name of a schedule, which the simulator does choose between.
    names = {n for n in strategy_names() if build_strategy(n).schedule == "parallel"}
    for path in driver_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value.lower() not in names, f"{path.name} names '{node.value}'"
