"""The deployed query's checkpoint: the last combined step, only for the plan it was taken of."""

from __future__ import annotations

import pytest

from fedcare.core.errors import ConfigError
from fedcare.net.query_server import CHECKPOINT, load_checkpoint
from fedcare.net.run_files import write_json_atomic
from fedcare.runtime.query_plan import AnalysisSpec, QueryPlan
from fedcare.runtime.query_run import QueryRun

PLAN = QueryPlan(
    name="brca",
    dataset="tcga-brca",
    sites=("northeast", "south"),
    analyses=(AnalysisSpec("km", "km", {}),),
)


def test_a_checkpoint_is_read_back_for_its_plan_and_refused_for_another(tmp_path):
    assert load_checkpoint(tmp_path, PLAN) is None  # a fresh folder starts from the start
    memo = QueryRun.start(PLAN).memo()
    write_json_atomic(tmp_path / CHECKPOINT, {"plan_hash": PLAN.hash, "memo": memo})
    assert load_checkpoint(tmp_path, PLAN) == memo
    other = QueryPlan(**{**PLAN.__dict__, "name": "other"})
    with pytest.raises(ConfigError, match=f"written for plan {PLAN.hash}, not this plan"):
        load_checkpoint(tmp_path, other)
    (tmp_path / CHECKPOINT).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a fedcare query checkpoint"):
        load_checkpoint(tmp_path, PLAN)
