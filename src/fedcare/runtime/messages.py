"""The deployment protocol's messages, declared once: the schema table the codec reads.

Coordinator -> site: JobPlan, TrainRequest, UpdateVerdict, EvalRequest, RunFinished,
AuditCopy. Site -> coordinator: Hello, ApprovalStatus, UpdateMessage, EvalResult. Either
way: ErrorReport. Each is a dataclass whose fields say where they travel (envelope, typed
header field, vector; see :mod:`.codec`), declared in :data:`SCHEMAS` under its job kind:
``session`` (joining, approving, errors, the end of a run), ``train`` or ``evaluate``.
:mod:`.secure_wire` and :mod:`.encrypted_round` own the bodies of the secure-sum kinds
(``secagg``, ``he``): the table lists them under ``train`` as raw kinds.

TrainRequest, EvalRequest and RunFinished tell the site ``contributed``: the last round whose
aggregate holds its update. A site keeps its new algorithm state (SCAFFOLD's control
variate, a personal model) pending until that says the update counted, so a dropped update
or a coordinator resumed from an earlier checkpoint never leaves the two sides out of step.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Self, TypeVar, dataclass_transform

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ProtocolError
from fedcare.core.metrics import AUC_BINS, EvalStats
from fedcare.core.records import ClientUpdate
from fedcare.core.vectors import FloatVector
from fedcare.runtime.codec import SCHEMAS as SCHEMAS
from fedcare.runtime.codec import WireMessage
from fedcare.runtime.encrypted_round import HE
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.secure_round import SecureRound
from fedcare.runtime.secure_wire import SECAGG
from fedcare.runtime.wire_fields import (
    FieldType,
    Flag,
    Float32,
    HeaderField,
    HeaderReader,
    Integer,
    Json,
    MismatchError,
    Number,
    Numbers,
    Segmented,
    SegmentList,
    Strings,
    Text,
    VectorLayout,
    count,
    finite,
)
from fedcare.runtime.wire_fields import pack_segments as pack_segments
from fedcare.runtime.wire_fields import unpack_segments as unpack_segments
from fedcare.runtime.wire_fields import vector_digest as vector_digest

NO_RUN = "none"
"""Run id of a Hello from a site that has not been given a run yet."""

BUDGET_EXCEEDED = "budget_exceeded"
"""ErrorReport code: the site's privacy budget refuses the plan, or a further round of it."""
DATA_INVALID = "data_invalid"  # the coordinator acknowledges a failed data check: no part
# A site already committed the round it is asked to train: the coordinator is behind it.
ALREADY_COUNTED = "already_counted"

SESSION, TRAIN, EVALUATE = "session", "train", "evaluate"
"""Today's job kinds: the run's lifecycle, training rounds, evaluation rounds."""

# The secure-sum steps: their bodies are secure_wire's and encrypted_round's to check.
SCHEMAS.declare_raw(SECAGG, TRAIN)
SCHEMAS.declare_raw(HE, TRAIN)


M = TypeVar("M", bound=WireMessage)


@dataclass_transform(frozen_default=True, eq_default=False, field_specifiers=(field,))
def message(
    job: str,
    vector: VectorLayout | None = None,
    *,
    eq: bool = False,
    run_id_if_empty: str | None = None,
) -> Callable[[type[M]], type[M]]:
    """Class decorator: the frozen message dataclass below it, declared in :data:`SCHEMAS`
    under ``job`` with its vector layout. Messages compare by identity unless ``eq``."""

    def declare(cls: type[M]) -> type[M]:
        built = dataclass(frozen=True, eq=eq)(cls)
        return SCHEMAS.declare(job, vector, run_id_if_empty=run_id_if_empty)(built)

    return declare


@dataclass(frozen=True, eq=False)
class RunMessage(WireMessage):
    """A message of one run's round; both travel in the envelope, and so does ``sender``,
    which the transport sets from the authenticated peer on receipt."""

    run_id: str
    round: int
    sender: str = field(default="", kw_only=True)


@message(SESSION)
class Hello(WireMessage):
    """Site -> coordinator on every (re)connection: what data it has and whether it passed the schema."""

    KIND: ClassVar[str] = "hello"
    data_ok: Annotated[bool, Flag()]
    # row counts, features, classes; no records
    data: Annotated[dict[str, Any], Json()] = field(default_factory=dict)
    problems: Annotated[list[str], Strings()] = field(default_factory=list)
    run_id: str = NO_RUN  # the run the site last took part in, if any
    round: int = 0  # the last round it trained in that run
    sender: str = ""


@message(SESSION)
class JobPlan(RunMessage):
    """Coordinator -> site: what would run on the site's data, and its content hash.

    A run of a deployed study also carries the whole study plan (every run, in order) and
    its hash: the owner approves the study once, and the site checks the run is in it.
    """

    KIND: ClassVar[str] = "job_plan"
    plan: Annotated[dict[str, Any], Json()]
    plan_hash: Annotated[str, Text()]
    study: Annotated[dict[str, Any] | None, HeaderField(Json(), optional=True)] = None
    study_hash: Annotated[str, HeaderField(Text(), only_with="study")] = ""


@message(SESSION)
class ApprovalStatus(RunMessage):
    """Site -> coordinator: the data owner approved the plan, or it waits for approval."""

    KIND: ClassVar[str] = "approval_status"
    plan_hash: Annotated[str, Text()]
    approved: Annotated[bool, Flag()]
    detail: Annotated[str, Text()] = ""


class SecureField(FieldType):
    """TrainRequest's ``secure``: the round's SecAgg session, its members and weight scale."""

    def write(self, value: SecureRound) -> dict[str, Any]:
        return {
            "session": base64.b64encode(value.session).decode("ascii"),
            "members": list(value.members),
            "weight_scale": value.weight_scale,
        }

    def read(self, raw: Any) -> SecureRound:
        try:
            if not isinstance(raw, dict):
                raise TypeError(f"found {type(raw).__name__}, not a mapping")
            text: Any = raw.get("session")
            members: Any = raw.get("members")
            scale: Any = raw.get("weight_scale")
            if not isinstance(text, str):
                raise TypeError("'session' is not text")
            session = base64.b64decode(text, validate=True)
            if not isinstance(members, list) or not all(count(m, 0) for m in members):
                raise TypeError("'members' is not a list of site indices")
            if not finite(scale) or not scale > 0 or len(session) < 16 or not members:
                raise ValueError("empty or out of range")
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise ProtocolError(
                "train request: field 'secure' must hold a base64 'session' of >= 16 bytes, "
                f"'members' (site indices) and a positive 'weight_scale' ({exc})"
            ) from exc
        return SecureRound(session, tuple(int(m) for m in members), float(scale))


SITE_CONTEXT = "site_context/"
"""Prefix of a site context's float32 entries among a train request's vector segments."""
EXACT_CONTEXT = "site_context_exact"
"""Header field of a site context's other entries, as float64 numbers (kept exact)."""


class ExactArrays(FieldType):
    """Names to lists of finite numbers, read back as float64 arrays."""

    def write(self, value: Mapping[str, npt.NDArray[Any]]) -> dict[str, list[float]]:
        return {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in value.items()}

    def read(self, raw: Any) -> dict[str, npt.NDArray[np.float64]]:
        if not isinstance(raw, dict) or not all(
            isinstance(v, list) and all(finite(x) for x in v) for v in raw.values()
        ):
            raise MismatchError("a mapping of names to lists of finite numbers")
        return {str(k): np.array(v, dtype=np.float64) for k, v in raw.items()}


class TrainVector:
    """A train request's vector: the model, the broadcast arrays and the site's own
    context from the strategy's personal pass (MOCHA's model and objective for this site),
    as float32 segments. Context entries of another dtype (a float64 proximal strength)
    travel in the header, exactly, so the site trains what the simulator trains."""

    fields = ("params", "arrays", "site_context")
    _segments = Segmented("params", "arrays", "train request")

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        context: Mapping[str, npt.NDArray[Any]] = values["site_context"]
        vectors = {SITE_CONTEXT + k: v for k, v in context.items() if v.dtype == np.float32}
        exact = {k: v for k, v in context.items() if v.dtype != np.float32}
        if exact:
            header[EXACT_CONTEXT] = ExactArrays().write(exact)
        arrays = {**values["arrays"], **vectors}
        return self._segments.encode({"params": values["params"], "arrays": arrays}, header)

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        parts = self._segments.decode(env, header)
        arrays: dict[str, FloatVector] = parts["arrays"]
        context: dict[str, npt.NDArray[Any]] = {
            k.removeprefix(SITE_CONTEXT): arrays.pop(k)
            for k in list(arrays)
            if k.startswith(SITE_CONTEXT)
        }
        if EXACT_CONTEXT in header.raw:
            exact = header.read(EXACT_CONTEXT, ExactArrays())
            clash = sorted(context.keys() & exact.keys())
            if clash:
                raise ProtocolError(
                    f"train request: site context entries {clash} are both in the vector and "
                    f"in header field '{EXACT_CONTEXT}'"
                )
            context.update(exact)
        return {**parts, "site_context": context}


@message(TRAIN, TrainVector())
class TrainRequest(RunMessage):
    """Coordinator -> sampled site: train round ``round`` from ``params``.

    ``arrays`` are the strategy's broadcast arrays (SCAFFOLD's control variate); the
    server optimizer's moments never leave the coordinator. ``site_context`` is what the
    strategy's personal pass sends this site alone (MOCHA: its own model and objective,
    never another site's; empty otherwise). Hyper-parameters are not here: the site
    trains with the plan its owner approved, named by ``plan_hash``. ``seed`` and
    ``site_index`` must match that plan; the site checks.
    """

    KIND: ClassVar[str] = "train_request"
    plan_hash: Annotated[str, Text()]
    params: FloatVector
    arrays: dict[str, FloatVector]
    seed: Annotated[int, Integer()]
    site_index: Annotated[int, Integer()]
    sampled: Annotated[list[str], Strings()]
    # > 0 when a round is retried after too few sites answered
    attempt: Annotated[int, Integer()] = 0
    # seconds the site has, from when it receives the request
    deadline_s: Annotated[float, Number(minimum=0.0)] = 0.0
    # last round whose aggregate holds this site's update (-1: none)
    contributed: Annotated[int, Integer(minimum=-1)] = -1
    # the round's secure-sum session, under SecAgg
    secure: Annotated[SecureRound | None, HeaderField(SecureField(), optional=True)] = None
    site_context: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


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


PERSONAL_SEGMENT = "personal_model"
"""Segment of an update's vector holding the site's trained personal model (MOCHA)."""


class UpdateVector:
    """An update's vector: the float32 delta and extras, or with a compression stage the
    encoded delta bytes then the extras as little-endian float32 bytes (uint8 on the
    wire); a personal model a collecting pass reports is one more float32 segment after
    the extras. Either way ``update_hash`` is the sha256 of the vector as sent."""

    fields = ("delta", "extras", "wire", "update_hash", "personal")
    _plain = Segmented("delta", "extras", "update from '{sender}'")

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        wire: WireDelta | None = values["wire"]
        extras: dict[str, FloatVector] = dict(values["extras"])
        personal: FloatVector | None = values["personal"]
        if personal is not None:  # one more segment, after the extras
            if PERSONAL_SEGMENT in extras:
                raise ProtocolError(f"update: extra '{PERSONAL_SEGMENT}' is a reserved name")
            extras[PERSONAL_SEGMENT] = personal
        values = {**values, "extras": extras}
        if wire is None:
            vector = self._plain.encode(values, header)
        else:
            packed, header_segments = pack_segments(dict(extras)) if extras else (None, [])
            tail = b"" if packed is None else packed.astype("<f4").tobytes()
            vector = np.frombuffer(wire.data + tail, dtype=np.uint8)
            header["wire"] = {
                "stage": wire.stage,
                "length": wire.length,
                "delta_bytes": len(wire.data),
            }
            header["segments"] = header_segments
        header["update_hash"] = vector_digest(vector)
        return vector

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        """Parse the vector; checking the numbers themselves is :mod:`.validation`'s job."""
        if "wire" in env.header:
            wire, extras = _wire_parts(env, header)
            # decoded by the coordinator, which checks the stage against the plan
            values: dict[str, Any] = {
                "delta": np.zeros(0, dtype=np.float32),
                "extras": extras,
                "wire": wire,
            }
        else:
            values = {**self._plain.decode(env, header), "wire": None}
        arrays: dict[str, FloatVector] = values["extras"]
        personal = arrays.pop(PERSONAL_SEGMENT, None)
        return {**values, "update_hash": header.read("update_hash", Text()), "personal": personal}


def _wire_parts(env: Envelope, h: HeaderReader) -> tuple[WireDelta, dict[str, FloatVector]]:
    """Split a compressed update's bytes into the encoded delta and the float32 extras."""
    what = f"update from '{env.sender}'"
    spec = h.read("wire", Json())
    vector = env.vector
    if vector is None or vector.dtype != np.uint8:
        found = "no vector" if vector is None else f"dtype {vector.dtype}"
        raise ProtocolError(f"{what}: a compressed update travels as uint8 bytes, found {found}")
    stage = spec.get("stage")
    if not isinstance(stage, dict) or not count(spec.get("length"), 0):
        raise ProtocolError(
            f"{what}: header field 'wire' needs a 'stage' mapping and integer 'length' and "
            f"'delta_bytes', found {spec!r}"
        )
    length: int = spec["length"]
    delta_bytes: Any = spec.get("delta_bytes")
    if not count(delta_bytes, 0):
        raise ProtocolError(f"{what}: 'wire' field 'delta_bytes' must be an integer >= 0")
    if not 0 <= delta_bytes <= vector.size or (vector.size - delta_bytes) % 4:
        raise ProtocolError(
            f"{what}: 'delta_bytes' {delta_bytes} does not split the {vector.size}-byte vector "
            f"into a delta and float32 extras"
        )
    raw = vector.tobytes()
    extras = np.frombuffer(raw[delta_bytes:], dtype="<f4").astype(np.float32)
    parts = unpack_segments(extras, h.read("segments", SegmentList()), what)
    return WireDelta(raw[:delta_bytes], stage, length), parts


@message(TRAIN, UpdateVector())
class UpdateMessage(RunMessage):
    """Site -> coordinator: the site's update for a round (delta, weight, algorithm extras).

    With a compression stage, ``wire`` holds the encoded delta and the vector on the wire
    is bytes (uint8); the coordinator decodes it into ``delta`` (see :meth:`decoded`).
    """

    KIND: ClassVar[str] = "update"
    attempt: Annotated[int, Integer()]
    delta: FloatVector
    extras: dict[str, FloatVector]
    weight: Annotated[float, Number()]
    num_samples: Annotated[int, Integer()]
    metrics: Annotated[dict[str, float], Numbers()] = field(default_factory=dict)
    update_hash: str = ""  # sha256 of the vector as sent; the coordinator recomputes it
    wire: WireDelta | None = None
    # the site's trained personal model, when the personal pass collects them (MOCHA)
    personal: FloatVector | None = None

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

    def decoded(self, delta: FloatVector) -> Self:
        """The same message with its wire delta decoded (by the coordinator, per the plan)."""
        return replace(self, delta=delta)


@message(TRAIN)
class UpdateVerdict(RunMessage):
    """Coordinator -> site: whether its update went into the aggregate, and why not."""

    KIND: ClassVar[str] = "update_verdict"
    attempt: Annotated[int, Integer()]
    accepted: Annotated[bool, Flag()]
    reason: Annotated[str, Text()] = ""


@message(EVALUATE, Float32("params"))
class EvalRequest(RunMessage):
    """Coordinator -> site: evaluate the global model of ``round`` on the site's test rows.

    ``final``: after the last round; personalised strategies also evaluate the site's own model.
    """

    KIND: ClassVar[str] = "eval_request"
    params: FloatVector
    final: Annotated[bool, Flag()] = False
    deadline_s: Annotated[float, Number(minimum=0.0)] = 0.0
    contributed: Annotated[int, Integer(minimum=-1)] = -1


class EvalCounts:
    """Per-model evaluation counts as one int64 vector; ``models`` in the header names
    each model's class count, row count and loss sum, ``segments`` its arrays."""

    fields = ("stats",)

    def encode(self, values: dict[str, Any], header: dict[str, Any]) -> npt.NDArray[Any]:
        arrays: dict[str, npt.NDArray[Any]] = {}
        models = []
        stats: dict[str, EvalStats] = values["stats"]
        for name, s in stats.items():
            arrays[f"{name}/confusion"] = s.confusion.reshape(-1)
            arrays[f"{name}/score_hist"] = s.score_hist.reshape(-1)
            models.append(
                {"name": name, "num_classes": s.num_classes, "count": s.count, "loss": s.loss_sum}
            )
        vector, segments = pack_segments(arrays, np.int64)
        header.update(models=models, segments=segments)
        return vector

    def decode(self, env: Envelope, header: HeaderReader) -> dict[str, Any]:
        who = f"evaluation from '{env.sender}'"
        if env.vector is None or env.vector.dtype != np.int64:
            raise ProtocolError(f"{who}: expected an int64 vector of counts")
        parts = unpack_segments(env.vector, header.read("segments", SegmentList()), who)
        models = env.header.get("models")
        if not isinstance(models, list):
            raise ProtocolError(f"{who}: header field 'models' must be a list")
        stats: dict[str, EvalStats] = {}
        for entry in models:
            name = _model_name(entry, who)  # checked before anything else reads the entry
            if name in stats:
                raise ProtocolError(f"{who}: model '{name}' appears twice in 'models'")
            stats[name] = _eval_stats(name, entry, parts, who)
        return {"stats": stats}


def _model_name(entry: Any, who: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        found = type(entry).__name__ if not isinstance(entry, dict) else "no string 'name'"
        raise ProtocolError(
            f"{who}: each entry of 'models' must be a mapping with a 'name', found {found}"
        )
    return str(entry["name"])


def _eval_stats(
    name: str, entry: dict[str, Any], parts: dict[str, npt.NDArray[Any]], who: str
) -> EvalStats:
    if not (count(entry.get("num_classes"), 2) and count(entry.get("count"), 0)):
        raise ProtocolError(f"{who}: model '{name}' needs num_classes >= 2 and count >= 0")
    if not finite(entry.get("loss")):
        raise ProtocolError(f"{who}: model '{name}' has a non-finite loss sum")
    c, rows_seen, loss = int(entry["num_classes"]), int(entry["count"]), float(entry["loss"])
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
    return EvalStats(c, rows_seen, loss, arrays["confusion"], arrays["score_hist"])


@message(EVALUATE, EvalCounts())
class EvalResult(RunMessage):
    """Site -> coordinator: additive evaluation counts per model ('global', 'personal').

    Counts, never predictions: summed at the coordinator they give the pooled metrics.
    """

    KIND: ClassVar[str] = "eval_result"
    stats: dict[str, EvalStats]


@message(SESSION)
class RunFinished(RunMessage):
    """Coordinator -> every site: the run ended (``status`` finished or failed)."""

    KIND: ClassVar[str] = "run_finished"
    status: Annotated[str, Text()]
    # sha256 of the final global model, as the audit log records it
    model_hash: Annotated[str, Text()] = ""
    detail: Annotated[str, Text()] = ""
    contributed: Annotated[int, Integer(minimum=-1)] = -1


@message(SESSION, run_id_if_empty=NO_RUN)
class ErrorReport(RunMessage):
    """Either way: something went wrong (bad data, a refused plan, a rejected message)."""

    KIND: ClassVar[str] = "error_report"
    code: Annotated[str, Text()]
    message: Annotated[str, Text()]


@message(SESSION, eq=True)
class AuditCopy(RunMessage):
    """Coordinator -> site: one signed audit entry that concerns the site, for its own copy.

    ``certificate`` is the coordinator's certificate (PEM): the site checks it against the
    study CA and verifies the entry's signature with the audit key embedded in it.
    """

    KIND: ClassVar[str] = "audit_entry"
    entry: Annotated[dict[str, Any], Json()]
    certificate: Annotated[str, Text()]


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


class _Types(Mapping[str, type[WireMessage]]):
    """kind -> message class, a live view of :data:`SCHEMAS` (declared kinds included)."""

    def __getitem__(self, kind: str) -> type[WireMessage]:
        return SCHEMAS[kind].cls

    def __iter__(self) -> Any:
        return iter(SCHEMAS)

    def __len__(self) -> int:
        return len(SCHEMAS)


MESSAGE_TYPES: Mapping[str, type[WireMessage]] = _Types()


def parse_message(env: Envelope) -> WireMessage:
    """The typed message inside ``env``; ProtocolError for an unknown kind or a bad field."""
    return SCHEMAS.decode(env)
