"""The ``query`` job kind's messages, declared in the codec's schema table.

A query reuses the session messages (Hello, JobPlan with the query plan, ApprovalStatus,
ErrorReport, RunFinished) and adds two:

- :class:`QueryQuestion` (coordinator -> site): one question of the plan, numbered by
  ``round`` (the question's position in the whole query), its parameters as JSON, and
  under ``secure: secagg`` the SecAgg session its ``sum`` is to be answered in;
- :class:`QueryRelease` (site -> coordinator): the site's answer as named float64 arrays in
  one vector (``segments`` and ``shapes`` in the header say which is which), and what the
  site withheld, in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.runtime.codec import SCHEMAS, WireMessage
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.query_plan import QUERY_JOB
from fedcare.runtime.wire_fields import (
    HeaderReader,
    Json,
    SegmentList,
    Strings,
    Text,
    pack_segments,
    unpack_segments,
)

QUERY = QUERY_JOB


class ReleaseVector:
    """A release's arrays as one float64 vector; their shapes in the header."""

    fields = ("values",)

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        arrays: Mapping[str, npt.NDArray[Any]] = values["values"]
        flat = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in arrays.items()}
        vector, segments = pack_segments(flat, np.float64)
        header.update(segments=segments, shapes={k: list(np.shape(v)) for k, v in arrays.items()})
        return vector

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        who = f"query release from '{env.sender}'"
        if env.vector is None or env.vector.dtype != np.float64:
            raise ProtocolError(f"{who}: expected a float64 vector of released values")
        if not np.isfinite(env.vector).all():
            raise ProtocolError(f"{who}: released values must be finite")
        parts = unpack_segments(env.vector, header.read("segments", SegmentList()), who)
        shapes = header.read("shapes", Json())
        if set(shapes) != set(parts):
            raise ProtocolError(
                f"{who}: 'shapes' names {sorted(shapes)}, the vector holds {sorted(parts)}"
            )
        out: dict[str, npt.NDArray[np.float64]] = {}
        for key, part in parts.items():
            shape = shapes[key]
            ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            if not ok or math.prod(shape) != part.size:
                raise ProtocolError(
                    f"{who}: '{key}' has {part.size} values, its shape says {shape!r}"
                )
            out[key] = part.reshape(shape).copy()
        return {"values": out}


@SCHEMAS.declare(QUERY)
@dataclass(frozen=True, eq=False)
class QueryQuestion(WireMessage):
    """Coordinator -> site: run computation ``step`` of ``analysis`` with ``params``."""

    KIND: ClassVar[str] = "query_question"
    run_id: str
    round: int  # the question's number in the query (0, 1, ...)
    analysis: Annotated[str, Text()]
    step: Annotated[str, Text()]
    params: Annotated[dict[str, Any], Json()]
    combine: Annotated[str, Text()]
    session: Annotated[str, Text()] = ""  # hex SecAgg session: answer by the secure sum
    sender: str = ""


@SCHEMAS.declare(QUERY, ReleaseVector())
@dataclass(frozen=True, eq=False)
class QueryRelease(WireMessage):
    """Site -> coordinator: the answer to question ``round``; numbers, never rows."""

    KIND: ClassVar[str] = "query_release"
    run_id: str
    round: int
    analysis: Annotated[str, Text()]
    step: Annotated[str, Text()]
    values: dict[str, npt.NDArray[np.float64]]
    suppressed: Annotated[list[str], Strings()] = field(default_factory=list)
    sender: str = ""


def fuzz_seeds(run_id: str) -> list[tuple[str, Envelope]]:
    """One valid message of each kind and who receives it, for the wire fuzzer's corpus
    (:mod:`fedcare.net.wire_fuzz` fuzzes every declared kind)."""
    question = QueryQuestion(run_id, 1, "km", "km.counts", {"times": [1.0, 2.5]}, "sum")
    values = {"at_risk": np.arange(6.0).reshape(2, 3), "events": np.ones(3)}
    release = QueryRelease(run_id, 1, "km", "km.counts", values, ["one cell withheld"])
    return [("site", question.to_envelope()), ("coordinator", release.to_envelope())]
