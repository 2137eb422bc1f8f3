"""What a data owner allowed to run on their hospital's data.

A job plan (model, algorithm, transforms, hyper-parameters, code hash) is identified by the
SHA-256 of its canonical JSON (``plan_hash``): keys sorted, no whitespace, integral floats
written as integers, so the same plan hashes the same whichever tool wrote it. A site refuses
a plan until its owner approves that hash (``fedcare site approve HASH``) or the plan matches
one of the owner's allow rules (e.g. ``model.name=logistic,strategy.name=fed*``).

A deployed study sends each run's plan together with the study plan (every run, in order).
The owner approves the study's hash once; a run is then allowed because its own hash is in
that approved study, which the site computes itself (``decide_member``). A run approved on
its own, or matching an allow rule, runs too: rules are matched against each run's plan.

``ApprovalStore`` is one JSON file at the site, re-read on every question so an approval made
from another terminal takes effect at once, and rewritten atomically under a file lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import fnmatch
import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.core.storage import write_bytes_atomic
from fedcare.data.json_file import read_json

_HASH = re.compile(r"^[0-9a-f]{64}$")
_FORMAT_VERSION = 1
# Every plan ever approved or offered is kept; a study plan is a few KiB per run.
MAX_APPROVALS_BYTES = 64 << 20


def canonical(value: Any, where: str = "plan") -> Any:
    """``value`` as plain JSON data with one spelling per meaning.

    Integral floats become ints (``lr: 1`` and ``lr: 1.0`` are the same plan), -0.0 becomes
    0, tuples become lists, numpy scalars become Python numbers. NaN, infinity, non-string
    keys and objects JSON cannot carry are refused, naming where they were found.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not a finite number")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, found {key!r}")
            out[key] = canonical(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return canonical(item(), where)
    raise ConfigError(f"{where}: {type(value).__name__} cannot be part of a plan (not JSON data)")


def canonical_json(value: Any, where: str = "plan") -> bytes:
    """UTF-8 canonical JSON: sorted keys, no whitespace, see :func:`canonical`."""
    return json.dumps(
        canonical(value, where),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def plan_hash(plan: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a job plan's canonical JSON: what a data owner approves."""
    return hashlib.sha256(canonical_json(plan)).hexdigest()


class Approvable(ABC):
    """A document a data owner approves: its data, canonical JSON of it, and that hash."""

    @abstractmethod
    def content(self) -> dict[str, Any]: ...

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON data: what the owner sees and what :func:`plan_hash` hashes."""
        return dict(canonical(self.content()))

    @property
    def hash(self) -> str:
        return plan_hash(self.to_dict())


def check_hash(value: str) -> str:
    """A plan hash as 64 lowercase hex characters, or a ConfigError saying what was found."""
    value = value.strip().lower()
    if not _HASH.match(value):
        raise ConfigError(
            f"a plan hash is 64 hexadecimal characters, found {value!r} ({len(value)} characters)"
        )
    return value


def _lookup(plan: Mapping[str, Any], dotted: str) -> Any:
    node: Any = plan
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class AllowRule:
    """Plans whose every named field matches its glob, e.g. ``model.name=logistic``."""

    fields: tuple[tuple[str, str], ...]
    by: str
    time: str

    @classmethod
    def parse(cls, text: str, by: str, time: str = "") -> AllowRule:
        """``key.path=glob,key.path=glob`` (all must match)."""
        fields = []
        for part in (p.strip() for p in text.split(",")):
            key, sep, pattern = part.partition("=")
            if not sep or not key.strip() or not pattern.strip():
                raise ConfigError(
                    f"allow rule {text!r}: expected comma-separated 'field.path=pattern' pairs, "
                    f"found {part!r}"
                )
            fields.append((key.strip(), pattern.strip()))
        return cls(tuple(sorted(fields)), by, time or _now())

    @property
    def text(self) -> str:
        return ",".join(f"{k}={p}" for k, p in self.fields)

    def matches(self, plan: Mapping[str, Any]) -> bool:
        for key, pattern in self.fields:
            try:
                value = _lookup(plan, key)
            except KeyError:
                return False
            if not fnmatch.fnmatchcase(_as_text(value), pattern):
                return False
        return True


@dataclass(frozen=True)
class Decision:
    """Why a plan may run (or ``approved=False`` when it waits for its owner)."""

    plan_hash: str
    approved: bool
    reason: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class ApprovalStore:
    """Approvals, allow rules and plans waiting for review at one site, in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- reading -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": _FORMAT_VERSION, "approved": {}, "allow": [], "pending": {}}
        data = read_json(self.path, "approval file", MAX_APPROVALS_BYTES)
        if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
            raise ConfigError(
                f"approval file '{self.path}' is not a version-{_FORMAT_VERSION} fedcare approval file"
            )
        data.setdefault("approved", {})
        data.setdefault("allow", [])
        data.setdefault("pending", {})
        return data

    def approved(self) -> dict[str, dict[str, str]]:
        """Approved plan hashes with who approved them and when."""
        return dict(self._load()["approved"])

    def rules(self) -> list[AllowRule]:
        return [AllowRule.parse(r["rule"], r["by"], r["time"]) for r in self._load()["allow"]]

    def pending(self) -> dict[str, dict[str, Any]]:
        """Plans that asked to run and wait for the owner, by hash."""
        return dict(self._load()["pending"])

    def is_approved(self, hash: str, plan: Mapping[str, Any] | None = None) -> bool:
        return self.decide(hash, plan).approved

    def decide(self, hash: str, plan: Mapping[str, Any] | None = None) -> Decision:
        """Whether the plan with ``hash`` may run, and why. Allow rules need the plan
        itself, which must hash to ``hash``."""
        hash = check_hash(hash)
        if plan is not None and plan_hash(plan) != hash:
            raise ProtocolError(
                f"job plan does not match its hash: announced {hash}, computed {plan_hash(plan)}"
            )
        data = self._load()
        if hash in data["approved"]:
            row = data["approved"][hash]
            return Decision(hash, True, f"approved by {row['by']} at {row['time']}")
        if plan is not None:
            for raw in data["allow"]:
                rule = AllowRule.parse(raw["rule"], raw["by"], raw["time"])
                if rule.matches(plan):
                    return Decision(hash, True, f"matches allow rule '{rule.text}' of {rule.by}")
        return Decision(hash, False, f"waiting for approval: fedcare site approve {hash}")

    def decide_member(self, plan: Mapping[str, Any], study: Mapping[str, Any]) -> Decision:
        """Whether a run of ``study`` may run: the study approved, the run approved on its
        own, or an allow rule matching the run. ProtocolError if the run is not in the study."""
        run_hash, study_hash = _membership(plan, study)
        row = self._load()["approved"].get(study_hash)
        if row is not None:
            return Decision(
                run_hash,
                True,
                f"approved with study '{study.get('study')}' ({study_hash}) by {row['by']} "
                f"at {row['time']}",
            )
        own = self.decide(run_hash, plan)
        if own.approved:
            return own
        return Decision(
            run_hash,
            False,
            f"waiting for approval of study '{study.get('study')}' "
            f"({len(study.get('runs', []))} runs): fedcare site approve {study_hash}",
        )

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock, then replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            data = self._load()
            yield data
            payload = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
            write_bytes_atomic(self.path, payload.encode())

    def approve(self, hash: str, by: str, note: str = "") -> None:
        """Allow the plan with ``hash`` to run here (it need not have been seen yet)."""
        hash = check_hash(hash)
        if not by.strip():
            raise ConfigError("an approval must name who approves it")
        with self._edit() as data:
            data["approved"][hash] = {"by": by, "time": _now(), "note": note}
            data["pending"].pop(hash, None)

    def withdraw(self, hash: str) -> bool:
        """Withdraw an approval; returns whether there was one."""
        hash = check_hash(hash)
        with self._edit() as data:
            return data["approved"].pop(hash, None) is not None

    def allow(self, rule: str, by: str) -> AllowRule:
        """Add an allow rule (``field.path=glob,...``) so matching plans need no approval."""
        parsed = AllowRule.parse(rule, by)
        with self._edit() as data:
            if all(r["rule"] != parsed.text for r in data["allow"]):
                data["allow"].append({"rule": parsed.text, "by": by, "time": parsed.time})
        return parsed

    def disallow(self, rule: str) -> bool:
        """Remove an allow rule; returns whether it existed."""
        text = AllowRule.parse(rule, "-").text
        with self._edit() as data:
            before = len(data["allow"])
            data["allow"] = [r for r in data["allow"] if r["rule"] != text]
            return len(data["allow"]) != before

    def request(self, plan: Mapping[str, Any], from_: str = "") -> Decision:
        """A plan asks to run: decide, and if it must wait, keep it so the owner can review it."""
        hash = plan_hash(plan)
        decision = self.decide(hash, plan)
        if not decision.approved:
            self._keep_pending(hash, plan, from_)
        return decision

    def request_member(
        self, plan: Mapping[str, Any], study: Mapping[str, Any], from_: str = ""
    ) -> Decision:
        """A run of a study asks to run: decide, and if it must wait, keep the whole study
        (not the run alone) for the owner to review and approve once."""
        decision = self.decide_member(plan, study)
        if not decision.approved:
            self._keep_pending(plan_hash(study), study, from_)
        return decision

    def _keep_pending(self, hash: str, plan: Mapping[str, Any], from_: str) -> None:
        """Keep a plan (or a whole study) that waits for its owner, once, for review."""
        with self._edit() as data:
            if hash not in data["pending"]:
                data["pending"][hash] = {"plan": canonical(plan), "from": from_, "time": _now()}


def _membership(plan: Mapping[str, Any], study: Mapping[str, Any]) -> tuple[str, str]:
    """(run hash, study hash), both computed here; ProtocolError unless the run is one of
    the study's runs."""
    runs = study.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, Mapping) for r in runs):
        raise ProtocolError("study plan: 'runs' must be a list of job plans")
    run_hash, study_hash = plan_hash(plan), plan_hash(study)
    if run_hash not in {plan_hash(r) for r in runs}:
        raise ProtocolError(
            f"job plan {run_hash} is not one of the {len(runs)} runs of study "
            f"'{study.get('study')}' ({study_hash})"
        )
    return run_hash, study_hash
