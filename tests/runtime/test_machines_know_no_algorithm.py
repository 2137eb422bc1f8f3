"""The deployed coordinator and site run every algorithm through the round core and the
strategy's hooks, as the simulator does: no algorithm module imported, no algorithm named
(import-linter's "Drivers know no algorithm by name" contract covers the imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedcare.runtime
from fedcare.algorithms.registry import build_strategy, strategy_names
from tests.rounds.test_drivers_know_no_algorithm import ALGORITHM_MODULES


def machine_sources() -> list[Path]:
    return sorted(Path(fedcare.runtime.__file__).parent.rglob("*.py"))


def test_the_deployed_machines_import_no_algorithm_module():
    for path in machine_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in ALGORITHM_MODULES, f"{path.name} imports {node.module}"


def test_the_deployed_machines_name_no_algorithm():
    names = {n for n in strategy_names() if build_strategy(n).schedule == "parallel"}
    for path in machine_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value.lower() not in names, f"{path.name} names '{node.value}'"
