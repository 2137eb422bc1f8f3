"""benchmarks/same_models.py decides whether a change kept every model: its verdicts.

Units here are tiny stand-ins (numpy vectors, no training), so what is tested is the
record/compare logic the issue-12 "same results" check rests on: identical models pass,
a model moved by more than 1e-6 fails, a model missing or new fails, and the committed
digest table tells bit-identical from changed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "same_models.py"


@pytest.fixture(scope="module")
def same_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("same_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def models(shift: float = 0.0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "fedavg": {"params": rng.normal(size=14).astype(np.float32) + np.float32(shift)},
        "ditto": {f"site:{s}": rng.normal(size=14).astype(np.float32) for s in ("a", "b")},
    }


def record(same_models: ModuleType, folder: Path, digests: Path | None = None) -> None:
    recorder = same_models.Recorder(folder, digests)
    unit = same_models.Unit("toy/heart", "stand-in", lambda: models())
    recorder.unit(unit, unit.run(), 0.0)
    recorder.close()


def compare(same_models: ModuleType, reference: Path, produced: dict, name: str = "toy/heart"):
    comparer = same_models.Comparer(reference)
    unit = same_models.Unit(name, "stand-in", lambda: produced)
    comparer.unit(unit, unit.run(), 0.0)
    return comparer.close(), {model: (verdict, detail) for model, verdict, detail in comparer.rows}


def test_the_same_models_pass_and_a_model_moved_past_the_tolerance_fails(
    same_models: ModuleType, tmp_path: Path
) -> None:
    record(same_models, tmp_path / "ref")
    assert compare(same_models, tmp_path / "ref", models())[0]
    passed, rows = compare(same_models, tmp_path / "ref", models(shift=4e-7))
    assert passed and rows["toy/heart/fedavg"][0] == "PASS"  # float32 rounding of 4e-7 < 1e-6
    passed, rows = compare(same_models, tmp_path / "ref", models(shift=3e-6))
    assert not passed
    assert rows["toy/heart/fedavg"][0] == "FAIL" and "max |diff|" in rows["toy/heart/fedavg"][1]
    assert rows["toy/heart/ditto"][0] == "PASS"


def test_a_model_missing_now_or_a_site_model_renamed_fails(
    same_models: ModuleType, tmp_path: Path
) -> None:
    record(same_models, tmp_path / "ref")
    produced = models()
    del produced["fedavg"]
    produced["ditto"]["site:c"] = produced["ditto"].pop("site:b")
    passed, rows = compare(same_models, tmp_path / "ref", produced)
    assert not passed
    assert rows["toy/heart/fedavg"] == ("FAIL", "in the reference, not produced now")
    assert rows["toy/heart/ditto"][0] == "FAIL" and "site:c" in rows["toy/heart/ditto"][1]


def test_the_digest_table_passes_bit_identical_models_only(
    same_models: ModuleType, tmp_path: Path
) -> None:
    table = tmp_path / "reference.json"
    record(same_models, tmp_path / "ref", table)
    assert json.loads(table.read_text())["models"]["toy/heart/fedavg"]["exact"] is True
    assert compare(same_models, table, models())[0]
    passed, rows = compare(same_models, table, models(shift=4e-7))
    assert not passed and "digest differs" in rows["toy/heart/fedavg"][1]


def test_a_model_marked_inexact_is_checked_on_its_summary_in_the_digest_table(
    same_models: ModuleType, tmp_path: Path
) -> None:
    table = tmp_path / "reference.json"
    recorder = same_models.Recorder(tmp_path / "ref", table)
    unit = same_models.Unit("toy/heart", "stand-in", models, inexact=("*",))
    recorder.unit(unit, unit.run(), 0.0)
    recorder.close()
    near = models()
    near["fedavg"]["params"][0] += np.float32(1e-7)  # CKKS-like noise: not bit-identical
    passed, rows = compare(same_models, table, near)
    assert passed and "not bit-reproducible" in rows["toy/heart/fedavg"][1]
    far = models()
    far["fedavg"]["params"][:] += np.float32(1e-3)
    assert not compare(same_models, table, far)[0]


def test_every_unit_has_a_distinct_name_and_only_selects_by_prefix_or_glob(
    same_models: ModuleType,
) -> None:
    units = same_models.units()
    names = [u.name for u in units]
    assert len(names) == len(set(names))
    chosen = same_models.selected(units, ["heart/", "robustness/*-x10"])
    assert {u.name for u in chosen} == {n for n in names if n.startswith("heart/")} | {
        "robustness/scale-x10"
    }
    with pytest.raises(SystemExit, match="matches no unit"):
        same_models.selected(units, ["nothing"])


def test_a_unit_that_no_longer_runs_fails_each_of_its_models(
    same_models: ModuleType, tmp_path: Path
) -> None:
    record(same_models, tmp_path / "ref")
    comparer = same_models.Comparer(tmp_path / "ref")
    unit = same_models.Unit("toy/heart", "stand-in", models)
    assert not comparer.failed(unit, "TypeError: FederatedSimulation() got an unexpected keyword")
    assert not comparer.close()
    assert [(m, v) for m, v, _ in comparer.rows] == [
        ("toy/heart/ditto", "FAIL"),
        ("toy/heart/fedavg", "FAIL"),
    ]
    assert "unexpected keyword" in comparer.rows[0][2]
