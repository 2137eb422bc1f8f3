"""Shared fixtures: a realistic heart-disease study (5 strategies x 4 sites x 5 seeds)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fedcare.report.results import StudyResults, parse_results

FIXTURE = Path(__file__).parent / "data" / "metrics.json"
_DOC: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def fixture_file() -> Path:
    return FIXTURE


@pytest.fixture
def metrics_doc() -> dict[str, Any]:
    """A fresh, editable copy of the fixture document."""
    return copy.deepcopy(_DOC)


@pytest.fixture
def results() -> StudyResults:
    return parse_results(copy.deepcopy(_DOC), str(FIXTURE))


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """A study folder as the study runner leaves it: just metrics.json."""
    shutil.copy(FIXTURE, tmp_path / "metrics.json")
    return tmp_path
