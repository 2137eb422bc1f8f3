"""The deployment protocol's messages: typed dataclasses, each to and from an Envelope.

Coordinator -> site: JobPlan, TrainRequest, UpdateVerdict, EvalRequest, RunFinished.
Site -> coordinator: Hello, ApprovalStatus, UpdateMessage, EvalResult. Either way: ErrorReport.

TrainRequest, EvalRequest and RunFinished tell the site ``contributed``: the last round whose
aggregate holds its update. A site keeps its new algorithm state (SCAFFOLD's control
variate, a personal model) pending until that says the update counted, so a dropped update
or a coordinator resumed from an earlier checkpoint never leaves the two sides out of step.

Several arrays travel as one flat vector plus ``segments`` (name, size) in the header, so
every message still has at most one vector for the transport to stream. Parsing checks
every header field and says which one is wrong; ``sender`` is copied from the envelope,
where the transport set it from the peer's certificate, never from a header field.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.core.metrics import AUC_BINS, EvalStats
from fedcare.core.records import ClientUpdate
from fedcare.core.vectors import FloatVector
from fedcare.runtime.envelope import Envelope, as_float32
from fedcare.runtime.secure_round import SecureRound

NO_RUN = "none"
"""Run id of a Hello from a site that has not been given a run yet."""

BUDGET_EXCEEDED = "budget_exceeded"
DATA_INVALID = "data_invalid"  # the coordinator acknowledges a failed data check: no part
"""ErrorReport code: the site's privacy budget refuses the plan, or a further round of it."""
# A site already committed the round it is asked to train: the coordinator is behind it.
ALREADY_COUNTED = "already_counted"

Segments = list[tuple[str, int]]


def vector_digest(vector: npt.NDArray[Any] | None) -> str:
    """sha256 of a payload's bytes: the update hash the audit log records."""
    if vector is None:
        return hashlib.sha256(b"").hexdigest()
    # Hash the array's own memory (no copy: a 2 GB update must not be duplicated to hash it).
    flat = np.ascontiguousarray(vector).reshape(-1)
    return hashlib.sha256(flat.view(np.uint8).data).hexdigest()


def pack_segments(
    arrays: Mapping[str, npt.NDArray[Any]], dtype: type[np.generic] = np.float32
) -> tuple[npt.NDArray[Any], Segments]:
    """Concatenate named 1-D arrays into one vector; ``segments`` says where each one is."""
    segments: Segments = [(name, int(np.asarray(a).size)) for name, a in arrays.items()]
    if len(arrays) == 1:  # the common case (a model, a delta): no copy
        only = np.ascontiguousarray(next(iter(arrays.values())), dtype=dtype).reshape(-1)
        return only, segments
    total = sum(size for _, size in segments)
    out = np.empty(total, dtype=dtype)
    start = 0
    for (_, size), array in zip(segments, arrays.values(), strict=True):
        out[start : start + size] = np.asarray(array).reshape(-1)
        start += size
    return out, segments


def unpack_segments(
    vector: npt.NDArray[Any], segments: Segments, what: str
) -> dict[str, npt.NDArray[Any]]:
    """Split a vector by ``segments`` into views; refuses segments that do not tile it."""
    total = sum(size for _, size in segments)
    if total != vector.size:
        raise ProtocolError(
            f"{what}: segments cover {total} values but the vector has {vector.size}"
        )
    out: dict[str, npt.NDArray[Any]] = {}
    start = 0
    for name, size in segments:
        out[name] = vector[start : start + size]
        start += size
    return out


INT64_MAX = 2**63 - 1  # the largest integer a header field may hold


def _finite(value: Any) -> bool:
    """A JSON number (not a bool) that is a finite float: 10**400 is not, NaN is not."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


class _Header:
    """Typed access to an envelope's header; every failure names the message and the field."""

    def __init__(self, env: Envelope) -> None:
        self.env = env
        self.raw = env.header

    def _fail(self, name: str, expected: str) -> ProtocolError:
        found = type(self.raw.get(name)).__name__ if name in self.raw else "nothing"
        who = f" from '{self.env.sender}'" if self.env.sender else ""
        return ProtocolError(
            f"message '{self.env.kind}'{who}: header field '{name}' must be {expected}, found {found}"
        )

    def text(self, name: str) -> str:
        value = self.raw.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def integer(self, name: str, minimum: int = 0) -> int:
        value: Any = self.raw.get(name)
        if not _count(value, minimum):
            raise self._fail(name, f"an integer from {minimum} to {INT64_MAX}")
        return int(value)

    def number(self, name: str, minimum: float | None = None) -> float:
        value: Any = self.raw.get(name)
        if not _finite(value) or (minimum is not None and float(value) < minimum):
            at_least = "" if minimum is None else f" >= {minimum}"
            raise self._fail(name, f"a finite number{at_least}")
        return float(value)

    def flag(self, name: str) -> bool:
        value = self.raw.get(name)
        if not isinstance(value, bool):
            raise self._fail(name, "true or false")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "a mapping")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.raw.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "a list of strings")
        return list(value)

    def numbers(self, name: str) -> dict[str, float]:
        value = self.mapping(name)
        if not all(_finite(v) for v in value.values()):
            raise self._fail(name, "a mapping of names to finite numbers")
        return {k: float(v) for k, v in value.items()}

    def segments(self, name: str = "segments") -> Segments:
        value = self.raw.get(name)
        ok = isinstance(value, list) and all(
            isinstance(s, list | tuple)
            and len(s) == 2
            and isinstance(s[0], str)
            and isinstance(s[1], int)
            and not isinstance(s[1], bool)
            and s[1] >= 0
            for s in value
        )
        if not ok:
            raise self._fail(name, "a list of [name, size] pairs")
        segments = [(str(s[0]), int(s[1])) for s in value]  # type: ignore[union-attr]
        names = [n for n, _ in segments]
        if len(set(names)) != len(names):
            raise self._fail(name, "a list of [name, size] pairs with unique names")
        return segments


def _expect_kind(env: Envelope, kind: str) -> None:
    if env.kind != kind:
        raise ProtocolError(f"expected a '{kind}' message, found '{env.kind}'")


@dataclass(frozen=True, eq=False)
class Hello:
    """Site -> coordinator on every (re)connection: what data it has and whether it passed the schema."""

    KIND: ClassVar[str] = "hello"
    data_ok: bool
    data: dict[str, Any] = field(default_factory=dict)  # row counts, features, classes; no records
    problems: list[str] = field(default_factory=list)
    run_id: str = NO_RUN  # the run the site last took part in, if any
    round: int = 0  # the last round it trained in that run
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {"data_ok": self.data_ok, "data": self.data, "problems": self.problems}
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(
            h.flag("data_ok"),
            h.mapping("data"),
            h.strings("problems"),
            env.run_id,
            env.round,
            env.sender,
        )


@dataclass(frozen=True, eq=False)
class JobPlan:
    """Coordinator -> site: what would run on the site's data, and its content hash.

    A run of a deployed study also carries the whole study plan (every run, in order) and
    its hash: the owner approves the study once, and the site checks the run is in it.
    """

    KIND: ClassVar[str] = "job_plan"
    run_id: str
    round: int
    plan: dict[str, Any]
    plan_hash: str
    sender: str = ""
    study: dict[str, Any] | None = None
    study_hash: str = ""

    def to_envelope(self) -> Envelope:
        header: dict[str, Any] = {"plan": self.plan, "plan_hash": self.plan_hash}
        if self.study is not None:
            header.update(study=self.study, study_hash=self.study_hash)
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        study = h.mapping("study") if "study" in h.raw else None
        return cls(
            env.run_id,
            env.round,
            h.mapping("plan"),
            h.text("plan_hash"),
            env.sender,
            study,
            h.text("study_hash") if study is not None else "",
        )


@dataclass(frozen=True, eq=False)
class ApprovalStatus:
    """Site -> coordinator: the data owner approved the plan, or it waits for approval."""

    KIND: ClassVar[str] = "approval_status"
    run_id: str
    round: int
    plan_hash: str
    approved: bool
    detail: str = ""
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {"plan_hash": self.plan_hash, "approved": self.approved, "detail": self.detail}
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(
            env.run_id,
            env.round,
            h.text("plan_hash"),
            h.flag("approved"),
            h.text("detail"),
            env.sender,
        )


@dataclass(frozen=True, eq=False)
class TrainRequest:
    """Coordinator -> sampled site: train round ``round`` from ``params``.

    ``arrays`` are the strategy's broadcast arrays (SCAFFOLD's control variate); the
    server optimizer's moments never leave the coordinator. Hyper-parameters are not
    here: the site trains with the plan its owner approved, named by ``plan_hash``.
    ``seed`` and ``site_index`` must match that plan; the site checks.
    """

    KIND: ClassVar[str] = "train_request"
    run_id: str
    round: int
    plan_hash: str
    params: FloatVector
    arrays: dict[str, FloatVector]
    seed: int
    site_index: int
    sampled: list[str]
    attempt: int = 0  # > 0 when a round is retried after too few sites answered
    deadline_s: float = 0.0  # seconds the site has, from when it receives the request
    contributed: int = -1  # last round whose aggregate holds this site's update (-1: none)
    secure: SecureRound | None = None  # the round's secure-sum session, under SecAgg
    sender: str = ""

    def to_envelope(self) -> Envelope:
        vector, segments = pack_segments({"params": self.params, **self.arrays})
        header = {
            "plan_hash": self.plan_hash,
            "segments": segments,
            "seed": self.seed,
            "site_index": self.site_index,
            "sampled": self.sampled,
            "attempt": self.attempt,
            "deadline_s": self.deadline_s,
            "contributed": self.contributed,
        }
        if self.secure is not None:
            header["secure"] = {
                "session": base64.b64encode(self.secure.session).decode("ascii"),
                "members": list(self.secure.members),
                "weight_scale": self.secure.weight_scale,
            }
        return Envelope.create(self.KIND, self.run_id, self.round, header, vector)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        parts = unpack_segments(as_float32(env), h.segments(), "train request")
        secure = _secure_round(env) if "secure" in env.header else None
        if "params" not in parts:
            raise ProtocolError("train request: no 'params' segment in the vector")
        params = parts.pop("params")
        return cls(
            env.run_id,
            env.round,
            h.text("plan_hash"),
            params,
            parts,
            h.integer("seed"),
            h.integer("site_index"),
            h.strings("sampled"),
            h.integer("attempt"),
            h.number("deadline_s", minimum=0.0),
            h.integer("contributed", minimum=-1),
            secure,
            env.sender,
        )


def _secure_round(env: Envelope) -> SecureRound:
    raw = env.header["secure"]
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"found {type(raw).__name__}, not a mapping")
        text: Any = raw.get("session")
        members: Any = raw.get("members")
        scale: Any = raw.get("weight_scale")
        if not isinstance(text, str):
            raise TypeError("'session' is not text")
        session = base64.b64decode(text, validate=True)
        if not isinstance(members, list) or not all(_count(m, 0) for m in members):
            raise TypeError("'members' is not a list of site indices")
        if not _finite(scale) or not scale > 0 or len(session) < 16 or not members:
            raise ValueError("empty or out of range")
    except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise ProtocolError(
            "train request: field 'secure' must hold a base64 'session' of >= 16 bytes, "
            f"'members' (site indices) and a positive 'weight_scale' ({exc})"
        ) from exc
    return SecureRound(session, tuple(int(m) for m in members), float(scale))


@dataclass(frozen=True)
class WireDelta:
    """A delta as a compression stage encoded it: what actually crosses the network.

    ``stage`` is the stage as JSON (``{"stage": "quantize", "bits": 8}``) and ``length`` the
    number of values it decodes to; the coordinator checks both against the plan before
    decoding, so a site cannot make it allocate or decode anything the plan did not agree.
    """

    data: bytes
    stage: dict[str, Any]
    length: int


@dataclass(frozen=True, eq=False)
class UpdateMessage:
    """Site -> coordinator: the site's update for a round (delta, weight, algorithm extras).

    With a compression stage, ``wire`` holds the encoded delta and the vector on the wire
    is bytes (uint8); the coordinator decodes it into ``delta`` (see :meth:`decoded`).
    """

    KIND: ClassVar[str] = "update"
    run_id: str
    round: int
    attempt: int
    delta: FloatVector
    extras: dict[str, FloatVector]
    weight: float
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    update_hash: str = ""  # sha256 of the vector as sent; the coordinator recomputes it
    sender: str = ""
    wire: WireDelta | None = None

    @classmethod
    def from_update(
        cls, run_id: str, round: int, attempt: int, update: ClientUpdate, num_samples: int
    ) -> Self:
        return cls(
            run_id,
            round,
            attempt,
            update.delta,
            dict(update.extras),
            update.weight,
            num_samples,
            dict(update.metrics),
        )

    def to_update(self) -> ClientUpdate:
        return ClientUpdate(self.delta, self.weight, dict(self.extras), dict(self.metrics))

    def to_envelope(self) -> Envelope:
        header: dict[str, Any] = {
            "attempt": self.attempt,
            "weight": self.weight,
            "num_samples": self.num_samples,
            "metrics": self.metrics,
        }
        if self.wire is None:
            vector, segments = pack_segments({"delta": self.delta, **self.extras})
        else:
            # Encoded delta bytes, then the extras as little-endian float32 bytes.
            extras, segments = pack_segments(dict(self.extras)) if self.extras else (None, [])
            tail = b"" if extras is None else extras.astype("<f4").tobytes()
            vector = np.frombuffer(self.wire.data + tail, dtype=np.uint8)
            header["wire"] = {
                "stage": self.wire.stage,
                "length": self.wire.length,
                "delta_bytes": len(self.wire.data),
            }
        header["segments"] = segments
        header["update_hash"] = vector_digest(vector)
        return Envelope.create(self.KIND, self.run_id, self.round, header, vector)

    def decoded(self, delta: FloatVector) -> Self:
        """The same message with its wire delta decoded (by the coordinator, per the plan)."""
        return replace(self, delta=delta)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        """Parse the message; checking the numbers themselves is :mod:`.validation`'s job."""
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        wire = None
        if "wire" in env.header:
            wire, parts = _wire_parts(env, h)
            delta: FloatVector = np.zeros(0, dtype=np.float32)  # decoded by the coordinator
        else:
            parts = unpack_segments(as_float32(env), h.segments(), f"update from '{env.sender}'")
            if "delta" not in parts:
                raise ProtocolError(f"update from '{env.sender}': no 'delta' segment in the vector")
            delta = parts.pop("delta")
        return cls(
            env.run_id,
            env.round,
            h.integer("attempt"),
            delta,
            parts,
            h.number("weight"),
            h.integer("num_samples"),
            h.numbers("metrics"),
            h.text("update_hash"),
            env.sender,
            wire,
        )


def _wire_parts(env: Envelope, h: _Header) -> tuple[WireDelta, dict[str, FloatVector]]:
    """Split a compressed update's bytes into the encoded delta and the float32 extras."""
    what = f"update from '{env.sender}'"
    spec = h.mapping("wire")
    vector = env.vector
    if vector is None or vector.dtype != np.uint8:
        found = "no vector" if vector is None else f"dtype {vector.dtype}"
        raise ProtocolError(f"{what}: a compressed update travels as uint8 bytes, found {found}")
    stage = spec.get("stage")
    if not isinstance(stage, dict) or not _count(spec.get("length"), 0):
        raise ProtocolError(
            f"{what}: header field 'wire' needs a 'stage' mapping and integer 'length' and "
            f"'delta_bytes', found {spec!r}"
        )
    length: int = spec["length"]
    delta_bytes: Any = spec.get("delta_bytes")
    if not _count(delta_bytes, 0):
        raise ProtocolError(f"{what}: 'wire' field 'delta_bytes' must be an integer >= 0")
    if not 0 <= delta_bytes <= vector.size or (vector.size - delta_bytes) % 4:
        raise ProtocolError(
            f"{what}: 'delta_bytes' {delta_bytes} does not split the {vector.size}-byte vector "
            f"into a delta and float32 extras"
        )
    raw = vector.tobytes()
    extras = np.frombuffer(raw[delta_bytes:], dtype="<f4").astype(np.float32)
    parts = unpack_segments(extras, h.segments(), what)
    return WireDelta(raw[:delta_bytes], stage, length), parts


@dataclass(frozen=True, eq=False)
class UpdateVerdict:
    """Coordinator -> site: whether its update went into the aggregate, and why not."""

    KIND: ClassVar[str] = "update_verdict"
    run_id: str
    round: int
    attempt: int
    accepted: bool
    reason: str = ""
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {"attempt": self.attempt, "accepted": self.accepted, "reason": self.reason}
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(
            env.run_id,
            env.round,
            h.integer("attempt"),
            h.flag("accepted"),
            h.text("reason"),
            env.sender,
        )


@dataclass(frozen=True, eq=False)
class EvalRequest:
    """Coordinator -> site: evaluate the global model of ``round`` on the site's test rows.

    ``final``: after the last round; personalised strategies also evaluate the site's own model.
    """

    KIND: ClassVar[str] = "eval_request"
    run_id: str
    round: int
    params: FloatVector
    final: bool = False
    deadline_s: float = 0.0
    contributed: int = -1
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {
            "final": self.final,
            "deadline_s": self.deadline_s,
            "contributed": self.contributed,
        }
        return Envelope.create(self.KIND, self.run_id, self.round, header, self.params)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(
            env.run_id,
            env.round,
            as_float32(env),
            h.flag("final"),
            h.number("deadline_s", minimum=0.0),
            h.integer("contributed", minimum=-1),
            env.sender,
        )


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Site -> coordinator: additive evaluation counts per model ('global', 'personal').

    Counts, never predictions: summed at the coordinator they give the pooled metrics.
    """

    KIND: ClassVar[str] = "eval_result"
    run_id: str
    round: int
    stats: dict[str, EvalStats]
    sender: str = ""

    def to_envelope(self) -> Envelope:
        arrays: dict[str, npt.NDArray[Any]] = {}
        models = []
        for name, s in self.stats.items():
            arrays[f"{name}/confusion"] = s.confusion.reshape(-1)
            arrays[f"{name}/score_hist"] = s.score_hist.reshape(-1)
            models.append(
                {"name": name, "num_classes": s.num_classes, "count": s.count, "loss": s.loss_sum}
            )
        vector, segments = pack_segments(arrays, np.int64)
        header = {"models": models, "segments": segments}
        return Envelope.create(self.KIND, self.run_id, self.round, header, vector)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        who = f"evaluation from '{env.sender}'"
        if env.vector is None or env.vector.dtype != np.int64:
            raise ProtocolError(f"{who}: expected an int64 vector of counts")
        parts = unpack_segments(env.vector, h.segments(), who)
        models = env.header.get("models")
        if not isinstance(models, list):
            raise ProtocolError(f"{who}: header field 'models' must be a list")
        stats: dict[str, EvalStats] = {}
        for entry in models:
            name = _model_name(entry, who)  # checked before anything else reads the entry
            if name in stats:
                raise ProtocolError(f"{who}: model '{name}' appears twice in 'models'")
            stats[name] = _eval_stats(name, entry, parts, who)
        return cls(env.run_id, env.round, stats, env.sender)


def _model_name(entry: Any, who: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        found = type(entry).__name__ if not isinstance(entry, dict) else "no string 'name'"
        raise ProtocolError(
            f"{who}: each entry of 'models' must be a mapping with a 'name', found {found}"
        )
    return str(entry["name"])


def _count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= INT64_MAX


def _eval_stats(
    name: str, entry: dict[str, Any], parts: dict[str, npt.NDArray[Any]], who: str
) -> EvalStats:
    if not (_count(entry.get("num_classes"), 2) and _count(entry.get("count"), 0)):
        raise ProtocolError(f"{who}: model '{name}' needs num_classes >= 2 and count >= 0")
    if not _finite(entry.get("loss")):
        raise ProtocolError(f"{who}: model '{name}' has a non-finite loss sum")
    c, count, loss = int(entry["num_classes"]), int(entry["count"]), float(entry["loss"])
    rows = 1 if c == 2 else c
    shapes = {"confusion": (c, c), "score_hist": (rows, 2, AUC_BINS)}
    arrays = {}
    for part, shape in shapes.items():
        values = parts.get(f"{name}/{part}")
        if values is None or values.size != math.prod(shape):  # exact: no int64 overflow
            raise ProtocolError(f"{who}: model '{name}' {part} must have shape {shape}")
        if (values < 0).any():
            raise ProtocolError(f"{who}: model '{name}' {part} has negative counts")
        arrays[part] = values.reshape(shape).copy()
    return EvalStats(c, count, loss, arrays["confusion"], arrays["score_hist"])


@dataclass(frozen=True, eq=False)
class RunFinished:
    """Coordinator -> every site: the run ended (``status`` finished or failed)."""

    KIND: ClassVar[str] = "run_finished"
    run_id: str
    round: int
    status: str
    model_hash: str = ""  # sha256 of the final global model, as the audit log records it
    detail: str = ""
    contributed: int = -1
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {
            "status": self.status,
            "model_hash": self.model_hash,
            "detail": self.detail,
            "contributed": self.contributed,
        }
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(
            env.run_id,
            env.round,
            h.text("status"),
            h.text("model_hash"),
            h.text("detail"),
            h.integer("contributed", minimum=-1),
            env.sender,
        )


@dataclass(frozen=True, eq=False)
class ErrorReport:
    """Either way: something went wrong (bad data, a refused plan, a rejected message)."""

    KIND: ClassVar[str] = "error_report"
    run_id: str
    round: int
    code: str
    message: str
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {"code": self.code, "message": self.message}
        return Envelope.create(self.KIND, self.run_id or NO_RUN, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(env.run_id, env.round, h.text("code"), h.text("message"), env.sender)


@dataclass(frozen=True)
class AuditCopy:
    """Coordinator -> site: one signed audit entry that concerns the site, for its own copy.

    ``certificate`` is the coordinator's certificate (PEM): the site checks it against the
    study CA and verifies the entry's signature with the audit key embedded in it.
    """

    KIND: ClassVar[str] = "audit_entry"
    run_id: str
    round: int
    entry: dict[str, Any]
    certificate: str
    sender: str = ""

    def to_envelope(self) -> Envelope:
        header = {"entry": self.entry, "certificate": self.certificate}
        return Envelope.create(self.KIND, self.run_id, self.round, header)

    @classmethod
    def from_envelope(cls, env: Envelope) -> Self:
        _expect_kind(env, cls.KIND)
        h = _Header(env)
        return cls(env.run_id, env.round, h.mapping("entry"), h.text("certificate"), env.sender)


Message = (
    Hello
    | JobPlan
    | ApprovalStatus
    | TrainRequest
    | UpdateMessage
    | UpdateVerdict
    | EvalRequest
    | EvalResult
    | RunFinished
    | ErrorReport
    | AuditCopy
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        JobPlan,
        ApprovalStatus,
        TrainRequest,
        UpdateMessage,
        UpdateVerdict,
        EvalRequest,
        EvalResult,
        RunFinished,
        ErrorReport,
        AuditCopy,
    )
}


def parse_message(env: Envelope) -> Message:
    """The typed message inside ``env``; ProtocolError for an unknown kind or a bad field."""
    env.validate()
    cls = MESSAGE_TYPES.get(env.kind)
    if cls is None:
        raise ProtocolError(
            f"unknown message kind '{env.kind}' from '{env.sender or '?'}'; "
            f"known: {', '.join(sorted(MESSAGE_TYPES))}"
        )
    return cls.from_envelope(env)
