"""Seeded fuzzing of every decoder that turns a peer's bytes into objects.

A *case* is a short stream of wire frames, as one end would receive them. Mutated cases
start from valid messages of every kind, both directions (a real coordinator's job plan
and train request, a site's hello, update, compressed update, evaluation counts and
SecAgg messages, ...), and damage them the way a broken or hostile peer would: bit
flips, inserted and deleted bytes, truncation, splicing frames of other messages, head
fields (length, chunks, dtype, kind, round, nonce) and header values (numbers huge,
negative or non-finite, types swapped, deep nesting, long strings, keys removed).
Random cases are random bytes and random well-formed heads with random JSON headers.

:class:`DecoderBench` feeds a case through the whole receiving path: the frame
assembler (with the plan's size as its vector limit), the typed message parsers, the
SecAgg and audit-entry decoders, the plans a site parses, and a real
:class:`~fedcare.runtime.coordinator.CoordinatorMachine` in the phase that accepts the
message. Every malformed input must end as a :class:`~fedcare.core.errors.FedcareError`
(the typed refusal the sender is told about); any other exception is an internal error,
a bug. Used by ``tests/net/test_wire_fuzz.py`` (CI-sized) and
``benchmarks/fuzz_decoders.py`` (the full run, with allocation and time limits).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.core.errors import FedcareError
from fedcare.core.metrics import AUC_BINS, EvalStats
from fedcare.core.records import TrainSpec
from fedcare.he.ckks import CkksKeys, generate_keys
from fedcare.net.proto import fedcare_pb2 as pb
from fedcare.net.serde import FrameAssembler, head_frame, wire_frames
from fedcare.runtime.audit import AuditEntry, entry_hash
from fedcare.runtime.coordinator import CoordinatorMachine, Phase
from fedcare.runtime.encrypted_round import HE, decrypt_request, encrypted_update
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.messages import (
    MESSAGE_TYPES,
    ApprovalStatus,
    AuditCopy,
    ErrorReport,
    EvalRequest,
    EvalResult,
    Hello,
    JobPlan,
    Message,
    RunFinished,
    TrainRequest,
    UpdateMessage,
    UpdateVerdict,
    WireDelta,
    parse_message,
)
from fedcare.runtime.query_messages import fuzz_seeds as query_fuzz_seeds
from fedcare.runtime.rounds import RunPlan, StudyPlan
from fedcare.runtime.secure_wire import (
    SECAGG,
    client_envelope,
    parse_server,
    server_envelope,
    session_of,
)
from fedcare.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    PublicKeys,
    RevealedShare,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedcare.secagg.shamir import Share
from fedcare.transforms.pipeline import compression_stage, stage_dict, to_wire

SITES = ("north", "east", "south", "west")
MODEL_SIZE = 4096  # parameters of the fuzzed plans' model
CHUNK_BYTES = 4096  # small chunks, so vectors span several frames
HEADER_LIMIT = 64 << 10  # twice the largest valid header of the corpus (a job plan)
RUN_ID = "fuzz-run"
COORDINATOR = "coordinator"

# Plans whose coordinators receive the fuzzed site messages: plain updates with a
# model-sized extra (SCAFFOLD), compressed updates (quantize), SecAgg.
PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "scaffold": ("scaffold", {}),
    "quantize": ("fedavg", {"upload": [{"stage": "clip", "max_norm": 1.0}, {"stage": "quantize"}]}),
    "secagg": ("fedavg", {"secure": "secure_aggregation"}),
    "ckks": ("fedavg", {"secure": "encrypt"}),
}


def plan_for(strategy: str, params: dict[str, Any]) -> RunPlan:
    """A four-site logistic-regression plan of about MODEL_SIZE parameters."""
    features = MODEL_SIZE // 2 - 1  # logistic, 2 classes: (features + 1) * 2 parameters
    return RunPlan(
        sites=SITES,
        strategy=strategy,
        strategy_params=params,
        spec=TrainSpec(optimizer="sgd", lr=0.05, epochs=1, batch_size=16),
        rounds=3,
        seed=7,
        input_shape=(features,),
        num_classes=2,
        study="fuzz",
        dataset="fuzz",
    )


# -- the valid messages every case starts from -------------------------------------------


def _send(machine: CoordinatorMachine, env: Envelope, site: str) -> list[Envelope]:
    return [out.envelope for out in machine.handle(env.from_peer(site), 0.0)]


def _coordinator(name: str) -> tuple[CoordinatorMachine, list[Envelope]]:
    """A coordinator for plan ``name`` with every site connected and approved, in round 1's
    training phase; and what it sent (job plans, train requests)."""
    strategy, params = PLANS[name]
    plan = plan_for(strategy, params)
    rng = np.random.default_rng(0)
    machine = CoordinatorMachine(
        RUN_ID, plan, rng.normal(size=MODEL_SIZE).astype(np.float32), noise_seed=1
    )
    sent: list[Envelope] = []
    for site in SITES:
        machine.site_connected(site, 0.0)
        data = {"num_train": 40, "num_test": 10}
        sent += _send(machine, Hello(True, data).to_envelope(), site)
    for site in SITES:
        approval = ApprovalStatus(RUN_ID, 0, machine.plan_hash, True)
        sent += _send(machine, approval.to_envelope(), site)
    sent += [out.envelope for out in machine.tick(1.0)]
    if machine.phase is not Phase.TRAINING:
        raise RuntimeError(f"fuzz coordinator '{name}' did not start round 1: {machine.phase}")
    return machine, sent


def _update(machine: CoordinatorMachine, site: str, rng: np.random.Generator) -> UpdateMessage:
    """A valid update of ``site`` for the machine's current round (compressed if the plan says)."""
    delta = (rng.normal(size=machine.size) * 1e-3).astype(np.float32)
    extras = {k: np.zeros(n, np.float32) for k, n in machine.extras.items()}
    round_ = machine.round  # the open round (rounds completed so far)
    msg = UpdateMessage(RUN_ID, round_, 0, delta, extras, 40.0, 40, {"train_loss": 0.5})
    stage = compression_stage(machine.strategy.upload.stages)
    if stage is None:
        return msg
    encoded, _ = machine.strategy.upload.encode(delta, {}, rng)
    return msg.__class__(
        RUN_ID,
        round_,
        0,
        np.zeros(0, np.float32),
        extras,
        40.0,
        40,
        {"train_loss": 0.5},
        wire=WireDelta(to_wire(encoded), stage_dict(stage), machine.size),
    )


def _eval_stats(rng: np.random.Generator) -> EvalStats:
    confusion = rng.integers(0, 20, size=(2, 2)).astype(np.int64)
    hist = rng.integers(0, 5, size=(1, 2, AUC_BINS)).astype(np.int64)
    return EvalStats(2, int(confusion.sum()), 3.5, confusion, hist)


def _session(sent: list[Envelope]) -> bytes:
    """The secure-sum session of the round the coordinator opened (from a train request)."""
    for env in sent:
        if env.kind == TrainRequest.KIND:
            secure = TrainRequest.from_envelope(env).secure
            if secure is not None:
                return secure.session
    raise RuntimeError("the fuzz coordinator opened no secure sum")


def _secagg_messages(session: bytes, rng: random.Random) -> tuple[list[Envelope], list[Envelope]]:
    """Structurally valid SecAgg messages: (site -> coordinator, coordinator -> site)."""
    key = rng.randbytes(32)
    meta = {"weight": 40.0, "num_samples": 40, "train_loss": 0.5}
    shares = tuple(EncryptedShare(0, r, rng.randbytes(12), rng.randbytes(48)) for r in (1, 2, 3))
    reveal = tuple(RevealedShare(o, Share(1, rng.getrandbits(120))) for o in (1, 2))
    client: list[ClientMessage] = [
        AdvertiseKeys(session, 0, PublicKeys(0, key, key)),
        ShareKeys(session, 0, shares),
        MaskedInput(session, 0, np.arange(MODEL_SIZE + 1, dtype=np.uint32)),
        UnmaskResponse(session, 0, reveal, reveal),
    ]
    up = [client_envelope(m, RUN_ID, 0, 0, **meta) for m in client]
    server: list[ServerMessage] = [
        KeyDirectory(session, 0, tuple(PublicKeys(i, key, key) for i in range(4))),
        ForwardedShares(session, 0, shares),
        UnmaskRequest(session, 0, frozenset({0, 1, 2}), frozenset({1}), frozenset({2})),
    ]
    down = [server_envelope(m, RUN_ID, 0, 0) for m in server]
    return up, down


@dataclass(frozen=True)
class Seed:
    """One valid message and who receives it ('coordinator' or 'site')."""

    receiver: str
    envelope: Envelope


def _audit_entry() -> dict[str, Any]:
    body = {"site": SITES[0], "round": 1, "update_hash": "ab" * 32}
    fields = (1, "2026-01-01T00:00:00Z", "update_accepted", COORDINATOR, body, "0" * 64)
    entry = AuditEntry(*fields, hash=entry_hash(*fields), signature="00" * 64)
    return dict(entry.__dict__)


def _he_keys() -> CkksKeys | None:
    try:
        return generate_keys()
    except (ImportError, FedcareError):
        return None


# -- the decoders ------------------------------------------------------------------------


class DecoderBench:
    """The receiving ends, built once; :meth:`decode` runs one case through them.

    Coordinators are kept as templates in the phase that accepts each kind of site
    message, and each case gets a deep copy, so one case cannot change the next.
    """

    def __init__(self, seed: int = 0, max_header_bytes: int = HEADER_LIMIT) -> None:
        rng = np.random.default_rng(seed)
        self.header_limit = max_header_bytes
        self.machines: dict[str, CoordinatorMachine] = {}
        self.sent: dict[str, list[Envelope]] = {}
        self.he_keys = _he_keys()
        seeds: list[Seed] = []
        for name in PLANS:
            if name == "ckks" and self.he_keys is None:
                continue  # without TenSEAL (the 'he' extra) there is no CKKS path to fuzz
            machine, sent = _coordinator(name)
            self.machines[name] = machine
            self.sent[name] = sent
            seeds += [Seed("site", env) for env in sent]
        # A waiting coordinator (hellos, approvals, errors) and an evaluating one.
        waiting = copy.deepcopy(self.machines["scaffold"])
        waiting.phase = Phase.WAITING
        for site in SITES:
            waiting.sites[site].approved = False
        self.machines["waiting"] = waiting
        evaluating = copy.deepcopy(self.machines["quantize"])
        for site in SITES:
            for out in evaluating.handle(
                _update(evaluating, site, rng).to_envelope().from_peer(site), 2.0
            ):
                if out.envelope.kind == EvalRequest.KIND:
                    seeds.append(Seed("site", out.envelope))
        if evaluating.phase is not Phase.EVALUATING:
            raise RuntimeError(f"fuzz coordinator did not reach evaluation: {evaluating.phase}")
        self.machines["evaluating"] = evaluating
        site_msgs: list[Message] = [
            Hello(True, {"num_train": 40, "num_test": 10}),
            ApprovalStatus(RUN_ID, 0, self.machines["waiting"].plan_hash, False, "waiting"),
            ErrorReport(RUN_ID, 0, "budget_exceeded", "over budget"),
            EvalResult(
                RUN_ID, evaluating.round, {"global": _eval_stats(rng), "personal": _eval_stats(rng)}
            ),
        ]
        seeds += [Seed(COORDINATOR, m.to_envelope()) for m in site_msgs]
        for name in ("scaffold", "quantize"):
            machine = self.machines[name]
            update = _update(machine, SITES[0], rng)
            seeds.append(Seed(COORDINATOR, update.to_envelope()))
        session = _session(self.sent["secagg"])
        up, down = _secagg_messages(session, random.Random(seed))
        seeds += [Seed(COORDINATOR, env) for env in up] + [Seed("site", env) for env in down]
        if self.he_keys is not None:
            seeds += self._ckks_seeds(self.he_keys, rng)
        to_site: list[Message] = [
            UpdateVerdict(RUN_ID, 1, 0, False, "rejected"),
            RunFinished(RUN_ID, 3, "finished", "ab" * 32, "", 2),
            ErrorReport(RUN_ID, 1, "malformed", "bad"),
            AuditCopy(RUN_ID, 1, _audit_entry(), "-----BEGIN CERTIFICATE-----\n"),
        ]
        seeds += [Seed("site", m.to_envelope()) for m in to_site]
        seeds += [Seed(to, env) for to, env in query_fuzz_seeds(RUN_ID)]  # the query job's
        self.seeds = seeds
        # The receivers' vector limit: the largest message these plans send (a CKKS
        # ciphertext of the model when TenSEAL is here, else SCAFFOLD's update or the
        # evaluation counts). Nothing larger may be allocated for a message.
        self.limit = max(s.envelope.nbytes for s in seeds)
        self._spare = {name: copy.deepcopy(m) for name, m in self.machines.items()}
        self._used: set[str] = set()
        kinds = {s.envelope.kind for s in seeds}
        missing = set(MESSAGE_TYPES) - kinds
        if missing:
            raise RuntimeError(f"the fuzz corpus lacks message kinds {sorted(missing)}")

    def _ckks_seeds(self, keys: CkksKeys, rng: np.random.Generator) -> list[Seed]:
        """Encrypted updates (site -> coordinator) and the request to decrypt their sum."""
        machine = copy.deepcopy(self.machines["ckks"])
        session = _session(self.sent["ckks"])
        meta = {"weight": 40.0, "num_samples": 40, "train_loss": 0.5}
        seeds, out = [], []
        for site in SITES:
            vector = rng.normal(size=machine.size + 1).astype(np.float32)
            env = encrypted_update(
                keys, vector, session=session, run_id=RUN_ID, round_=0, attempt=0, **meta
            )
            seeds.append(Seed(COORDINATOR, env))
            out = machine.handle(env.from_peer(site), 2.0)
        seeds += [Seed("site", o.envelope) for o in out if o.envelope.kind == HE]
        if len(seeds) != len(SITES) + 1:
            raise RuntimeError("the fuzz CKKS coordinator did not ask for a decryption")
        return seeds

    def assembler(self) -> FrameAssembler:
        return FrameAssembler(self.limit, self.header_limit)

    def machine_for(self, env: Envelope) -> CoordinatorMachine:
        """A fresh copy of the coordinator that would receive ``env`` from a site (copied
        beforehand by :meth:`refill`, so a case's allocations are its decoders' own)."""
        kind = env.kind
        if kind == SECAGG:
            name = "secagg"
        elif kind == HE and "ckks" in self.machines:
            name = "ckks"
        elif kind == EvalResult.KIND:
            name = "evaluating"
        elif kind == UpdateMessage.KIND:
            name = "quantize" if "wire" in env.header else "scaffold"
        else:  # hellos, approvals, errors; and kinds a site may not send at all
            name = "waiting"
        if name in self._used:  # a second message of one case: copy now
            return copy.deepcopy(self.machines[name])
        self._used.add(name)
        return self._spare[name]

    def refill(self) -> None:
        """Replace the machines the last case used with fresh copies."""
        for name in self._used:
            self._spare[name] = copy.deepcopy(self.machines[name])
        self._used.clear()

    def decode(self, frames: list[bytes], receiver: str) -> int:
        """Feed ``frames`` to ``receiver``'s decoders; returns how many envelopes came out.

        Raises FedcareError for a refused input (the expected outcome for most cases)
        and anything else for a bug.
        """
        asm = self.assembler()
        delivered = 0
        for frame in frames:
            env = asm.feed_bytes(frame)
            if env is None:
                continue
            delivered += 1
            if receiver == COORDINATOR:
                self._at_coordinator(env.from_peer(SITES[0]))
            else:
                self._at_site(env.from_peer(COORDINATOR))
        return delivered

    def _at_coordinator(self, env: Envelope) -> None:
        # The machine parses every message itself (typed messages, SecAgg, CKKS) and must
        # answer a malformed one with an error report, never raise.
        self.machine_for(env).handle(env, 5.0)

    def _at_site(self, env: Envelope) -> None:
        if env.kind == HE:
            if self.he_keys is not None:
                decrypt_request(env, self.he_keys, SITES[0])
            return
        if env.kind == SECAGG:
            session_of(env)
            parse_server(env, 0)
            return
        message = parse_message(env)
        if isinstance(message, JobPlan):
            RunPlan.from_dict(message.plan)
            if message.study is not None:
                StudyPlan.from_dict(message.study)
        elif isinstance(message, AuditCopy):
            AuditEntry.from_dict(message.entry).content_hash()


# -- mutations ---------------------------------------------------------------------------


def _frames(env: Envelope) -> list[bytes]:
    return list(wire_frames(env, CHUNK_BYTES))


def _head_with(env: Envelope, **fields: Any) -> bytes:
    """``env``'s head frame with some fields replaced, bypassing every sender-side check."""
    head = pb.Head(
        kind=env.kind,
        run_id=env.run_id,
        round=env.round,
        nonce=env.nonce,
        header_json=json.dumps(env.header, sort_keys=True, separators=(",", ":")),
    )
    if env.vector is not None:
        head.dtype = env.vector.dtype.name
        head.length = int(env.vector.size)
        head.chunks = -(-int(env.vector.nbytes) // CHUNK_BYTES)
    for name, value in fields.items():
        setattr(head, name, value)
    return head_frame(head)


HUGE_VALUES: tuple[str, ...] = (
    "1" + "0" * 400,  # 10**400
    "-" + "9" * 30,
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-1",
    "18446744073709551617",
    "0.0",
    "true",
    "null",
    '"x"',
    "[]",
    "{}",
    "[1, 2, 3]",
    '{"a": [1]}',
    '"' + "A" * 5000 + '"',
    '"\\ud800"',
)


def _deep(depth: int, rng: random.Random) -> str:
    opener, closer = ("[", "]") if rng.random() < 0.5 else ('{"k":', "}")
    return opener * depth + "1" + closer * depth


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            yield from _paths(v, (*prefix, i))


_MARK = "\u0000FUZZ\u0000"


def _mutate_header(env: Envelope, rng: random.Random) -> str:
    """The header JSON with one value replaced by raw JSON text (which may be invalid on purpose)."""
    header = copy.deepcopy(env.header)
    paths = list(_paths(header))[1:] or [("extra",)]
    path = rng.choice(paths)
    roll = rng.random()
    if roll < 0.1 and len(path) >= 1:  # remove the key
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, list) and parent:
            parent.pop()
        return json.dumps(header)
    if roll < 0.3:
        raw = _deep(rng.choice((10, 40, 100, 1000, 5000, 100_000)), rng)
    else:
        raw = rng.choice(HUGE_VALUES)
    target: Any = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _MARK
    return json.dumps(header).replace(json.dumps(_MARK), raw, 1)


def _bytes_mutation(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    op = rng.randrange(5)
    if op == 0 and data:  # flip 1..8 bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # insert bytes
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 2 and data:  # delete a range
        i = rng.randrange(len(data))
        del data[i : i + rng.randint(1, 16)]
    elif op == 3:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    else:  # overwrite one byte with an interesting value
        if data:
            data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12))
    return bytes(data)


def _head_mutation(env: Envelope, rng: random.Random) -> bytes:
    kinds = [*MESSAGE_TYPES, SECAGG, HE, "", "bad kind!"]
    choices: list[Callable[[], dict[str, Any]]] = [
        lambda: {"length": rng.choice((0, 1, 2**31, 2**40, 2**64 - 1, MODEL_SIZE * 3))},
        lambda: {"chunks": rng.choice((0, 1, 2, 2**32 - 1))},
        lambda: {
            "dtype": rng.choice(("float32", "float16", "object", "U10", "int64", "uint8", "V8", ""))
        },
        lambda: {"kind": rng.choice(kinds)},  # one kind's header parsed as another's
        lambda: {"round": rng.choice((0, 2**63, 2**64 - 1))},
        lambda: {"nonce": rng.randbytes(rng.choice((0, 15, 17)))},
        lambda: {"run_id": rng.choice(("", "other-run", "x" * 10_000))},
        lambda: {"header_json": _mutate_header(env, rng)},
        lambda: {"header_json": rng.choice(("", "[]", "1", "{", "null", '{"a":NaN}'))},
    ]
    return _head_with(env, **rng.choice(choices)())


@dataclass(frozen=True)
class Case:
    receiver: str
    frames: list[bytes]
    mutation: str


def mutated_case(bench: DecoderBench, rng: random.Random) -> Case:
    """A valid message (or two) damaged by one to three mutations."""
    seed = rng.choice(bench.seeds)
    frames = _frames(seed.envelope)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.choice(("bytes", "bytes", "head", "head", "header", "splice", "frames"))
        names.append(op)
        if op == "bytes" and frames:
            i = rng.randrange(len(frames))
            frames[i] = _bytes_mutation(frames[i], rng)
        elif op == "head":
            frames[:1] = [_head_mutation(seed.envelope, rng)]
        elif op == "header":
            frames[:1] = [_head_with(seed.envelope, header_json=_mutate_header(seed.envelope, rng))]
        elif op == "splice":  # another message's frames in the middle, or in place of ours
            other = _frames(rng.choice(bench.seeds).envelope)
            i = rng.randrange(len(frames) + 1)
            j = rng.randrange(len(other) + 1)
            frames = frames[:i] + other[j:] if rng.random() < 0.5 else other[:j] + frames[i:]
        elif frames:  # drop, duplicate or swap frames
            i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
            roll = rng.random()
            if roll < 0.33:
                del frames[i]
            elif roll < 0.66:
                frames.insert(i, frames[j])
            else:
                frames[i], frames[j] = frames[j], frames[i]
    return Case(seed.receiver, frames, "+".join(names))


# Header fields the messages read: a random header sets some of them to random JSON.
HEADER_KEYS = (
    "data_ok",
    "data",
    "problems",
    "plan",
    "plan_hash",
    "segments",
    "models",
    "wire",
    "attempt",
    "weight",
    "num_samples",
    "metrics",
    "update_hash",
    "step",
    "session",
    "shares",
    "secure",
    "entry",
    "certificate",
    "status",
    "final",
    "deadline_s",
    "contributed",
    "seed",
    "site_index",
    "sampled",
    "code",
    "message",
    "c_pk",
    "s_pk",
    "b",
    "s",
    "keys",
    "survivors",
    "study",
    "study_hash",
)
# Keys inside random JSON: any header field, and those of a model's evaluation entry.
NESTED_KEYS = (*HEADER_KEYS, "name", "count", "loss")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 6 or roll < 0.45:
        return rng.choice(
            (
                rng.randint(-(2**70), 2**70),
                rng.random() * 10 ** rng.randint(-10, 300),
                rng.choice((True, False, None)),
                "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 12))),
                rng.randint(0, 4),
            )
        )
    if roll < 0.7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(NESTED_KEYS): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def random_case(bench: DecoderBench, rng: random.Random) -> Case:
    """Random bytes, or a random well-formed head (a known kind, a random JSON header and
    a random vector) that the decoders must refuse field by field."""
    receiver = rng.choice((COORDINATOR, "site"))
    if rng.random() < 0.4:
        frames = [
            bytes([rng.choice((0x0A, 0x12, rng.randrange(256)))])
            + rng.randbytes(rng.randint(0, 300))
            for _ in range(rng.randint(1, 4))
        ]
        return Case(receiver, frames, "random-bytes")
    kind = rng.choice([*MESSAGE_TYPES, SECAGG, HE])
    header: dict[str, Any] = {}
    for _ in range(rng.randint(0, 8)):
        value = _random_json(rng)
        key = rng.choice(HEADER_KEYS)
        header[key] = value
    dtype = rng.choice((None, "float32", "int64", "uint32", "uint8"))
    vector = None
    if dtype is not None:
        size = rng.choice((0, 1, 7, 64, MODEL_SIZE, MODEL_SIZE + 1))
        vector = np.frombuffer(rng.randbytes(size * np.dtype(dtype).itemsize), dtype=dtype)
    env = Envelope(
        kind,
        rng.choice((RUN_ID, "none", "x")),
        rng.randint(0, 5),
        rng.randbytes(16),
        header,
        vector,
    )
    try:
        frames = _frames(env)
    except FedcareError:  # e.g. a header number JSON cannot carry: send it anyway
        frames = [_head_with(env)]
    return Case(receiver, frames, "random-message")
