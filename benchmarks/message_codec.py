"""The schema-table codec against the hand-written messages it replaced (issue 12, item 6).

Loads ``src/fedcare/runtime/messages.py`` as it was at ``--reference`` (main before the
codec: eleven hand-written to/from pairs) beside today's module, builds the same corpus of
messages with each (every kind, with and without its optional parts: a study plan, a
SecAgg session, a compressed update), and checks, message by message:

- the same wire format: kind, run, round, the header as JSON (keys sorted) and the vector's
  dtype and bytes are identical;
- each side parses what the other sent to the same field values;

then times encode + parse per message for both, interleaved in one process, and prints
the medians and their ratio.

    .venv/bin/python benchmarks/message_codec.py
    .venv/bin/python benchmarks/message_codec.py --reference 45cab86 --runs 15
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import fedcare.runtime.messages as today
from fedcare.core.metrics import EvalStats
from fedcare.runtime.secure_round import SecureRound

REPO = Path(__file__).resolve().parent.parent
MODULE = "src/fedcare/runtime/messages.py"


def reference_module(commit: str) -> ModuleType:
    """``messages.py`` as it was at ``commit``, imported under its own name."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{MODULE}"], cwd=REPO, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "reference_messages.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("reference_messages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def corpus(m: ModuleType, size: int) -> list[Any]:
    """Every kind of message, built with module ``m``'s classes from one seed."""
    rng = np.random.default_rng(0)

    def vec(n: int = size) -> np.ndarray:
        return rng.normal(size=n).astype(np.float32)

    stats = EvalStats.from_predictions(rng.random(50), rng.integers(0, 2, 50), np.ones(50), 2)
    wire = m.WireDelta(b"\x01" * 8, {"stage": "topk", "fraction": 0.1}, 10)
    return [
        m.Hello(True, {"num_train": 10}, ["x"], "run-1", 3),
        m.Hello(False, {}, []),
        m.JobPlan("run-1", 0, {"rounds": 3}, "ab" * 32),
        m.JobPlan("run-1", 0, {"rounds": 3}, "ab" * 32, study={"runs": [1]}, study_hash="cd"),
        m.ApprovalStatus("run-1", 0, "cd" * 32, False, "waiting"),
        m.TrainRequest("run-1", 2, "ab", vec(), {"c": vec()}, 5, 1, ["a", "b"], 1, 30.0, 1),
        m.TrainRequest(
            "run-1", 2, "ab", vec(), {}, 5, 1, ["a"], secure=SecureRound(b"k" * 16, (0, 1), 2.0)
        ),
        m.UpdateMessage("run-1", 2, 0, vec(), {"x": vec(10)}, 3.0, 3, {"train_loss": 0.5}),
        m.UpdateMessage("run-1", 2, 0, np.zeros(10, np.float32), {"x": vec(3)}, 3.0, 3, wire=wire),
        m.UpdateVerdict("run-1", 1, 0, False, "bad"),
        m.EvalRequest("run-1", 2, vec(), True, 5.0, 1),
        m.EvalResult("run-1", 2, {"global": stats, "personal": stats}),
        m.RunFinished("run-1", 5, "finished", "ef" * 32, "d", 4),
        m.ErrorReport("", 0, "malformed", "bad"),
        m.AuditCopy("run-1", 1, {"a": 1}, "PEM"),
    ]


def same_value(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray):
        return bool(np.array_equal(x, y))
    if isinstance(x, EvalStats):
        return x.summary() == y.summary() and np.array_equal(x.score_hist, y.score_hist)
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
    if dataclasses.is_dataclass(x):  # WireDelta, SecureRound: compare field by field
        return same_value(vars(x), vars(y))
    return bool(x == y)


def same_wire(a: Any, b: Any) -> bool:
    ea, eb = a.to_envelope(), b.to_envelope()
    head = (ea.kind, ea.run_id, ea.round) == (eb.kind, eb.run_id, eb.round)
    header = json.dumps(ea.header, sort_keys=True) == json.dumps(eb.header, sort_keys=True)
    if ea.vector is None or eb.vector is None:
        vector = ea.vector is None and eb.vector is None
    else:
        vector = ea.vector.dtype == eb.vector.dtype and ea.vector.tobytes() == eb.vector.tobytes()
    return head and header and vector


def cross_parsed(a: Any, b: Any, ref: ModuleType) -> bool:
    """Today's parser reads the reference's envelope, and the reference reads today's."""
    ours = today.parse_message(a.to_envelope().from_peer("site-a"))
    theirs = ref.parse_message(b.to_envelope().from_peer("site-a"))
    return all(same_value(getattr(ours, f), getattr(theirs, f)) for f in vars(theirs))


def per_message_us(m: ModuleType, messages: list[Any], loops: int) -> float:
    envelopes = [x.to_envelope().from_peer("site-a") for x in messages]
    start = time.perf_counter()
    for _ in range(loops):
        for message in messages:
            message.to_envelope()
        for env in envelopes:
            m.parse_message(env)
    return (time.perf_counter() - start) / (loops * len(messages)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="45cab86", help="commit with the old module")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000, help="values per vector")
    args = parser.parse_args()
    ref = reference_module(args.reference)
    old, new = corpus(ref, args.size), corpus(today, args.size)
    wire = sum(same_wire(a, b) for a, b in zip(new, old, strict=True))
    parsed = sum(cross_parsed(a, b, ref) for a, b in zip(new, old, strict=True))
    print(
        f"{len(new)} messages of {len({type(m) for m in new})} kinds, {args.size} values a vector"
    )
    print(f"  same wire format (header JSON, vector dtype and bytes)  {wire} of {len(new)}")
    print(f"  each side parses the other's to the same fields        {parsed} of {len(new)}")
    times: dict[str, list[float]] = {"hand-written": [], "codec": []}
    for _ in range(args.runs):  # interleaved: load from other processes hits both alike
        times["hand-written"].append(per_message_us(ref, old, args.loops))
        times["codec"].append(per_message_us(today, new, args.loops))
    hand, codec = (statistics.median(t) for t in times.values())
    print(
        f"encode + parse per message, median of {args.runs} runs: hand-written ({args.reference}) "
        f"{hand:.1f} us, codec {codec:.1f} us, ratio {codec / hand:.2f}"
    )
    if wire != len(new) or parsed != len(new):
        sys.exit("the codec's wire format differs from the reference's")


if __name__ == "__main__":
    main()
