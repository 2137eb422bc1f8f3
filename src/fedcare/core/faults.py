"""Named fault points: where a crash test kills a process, or a disk-full test fails a write.

Production code calls :func:`reach` at each moment that matters for durability (a store
commit, a checkpoint write or rename, an audit append, a message about to leave). Normally
this does nothing but a dictionary lookup. With the environment variable ``FEDCARE_FAULT``
set, for example in a test's child process::

    FEDCARE_FAULT="coordinator.checkpoint.renamed@3"          # die the 3rd time it is reached
    FEDCARE_FAULT="coordinator.audit.append@2:enospc"         # the 2nd append finds the disk full

the process dies there at once (``os._exit(KILLED_EXIT)``, like ``kill -9``: no cleanup,
no flush, no ``finally``), or the call raises ``OSError(ENOSPC)`` as a full disk would.
Every point is declared in :data:`POINTS` with what has happened when it is reached, so a
crash test can walk them all and a typo in a test is an error, not a point never hit.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import Literal

ENV = "FEDCARE_FAULT"
KILLED_EXIT = 137  # what a shell reports for a process killed by SIGKILL

Action = Literal["kill", "enospc"]

# name -> what is durable / sent when the point is reached. Grouped by process role
# ("coordinator." and "site." prefixes); crash tests walk every entry of a role.
POINTS: dict[str, str] = {}


def declare(name: str, meaning: str) -> str:
    """Declare a fault point (at import time of the module that reaches it); returns name."""
    if POINTS.get(name, meaning) != meaning:
        raise ValueError(f"fault point '{name}' is declared twice with different meanings")
    POINTS[name] = meaning
    return name


def points_of(role: str) -> list[str]:
    """Every declared point of a role ("coordinator" or "site"), in declaration order."""
    return [p for p in POINTS if p.startswith(f"{role}.")]


@dataclass(frozen=True)
class FaultPlan:
    """Parsed ``FEDCARE_FAULT``: which point, at which hit (1-based), doing what."""

    point: str
    hit: int = 1
    action: Action = "kill"

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        spec, _, action = text.strip().partition(":")
        name, _, hit = spec.partition("@")
        if action not in ("", "kill", "enospc"):
            raise ValueError(f"{ENV}='{text}': action must be 'kill' or 'enospc', found '{action}'")
        try:
            count = int(hit) if hit else 1
        except ValueError:
            raise ValueError(f"{ENV}='{text}': '@{hit}' must be a whole number") from None
        if count < 1:
            raise ValueError(f"{ENV}='{text}': the hit count starts at 1")
        return cls(name, count, "enospc" if action == "enospc" else "kill")


_lock = threading.Lock()
_hits: dict[str, int] = {}
_plan: FaultPlan | None = None
_loaded = False


def _active() -> FaultPlan | None:
    global _plan, _loaded
    if not _loaded:
        raw = os.environ.get(ENV, "")
        _plan = FaultPlan.parse(raw) if raw else None
        _loaded = True
    return _plan


def reach(name: str) -> None:
    """Mark that execution reached fault point ``name`` (declared in :data:`POINTS`)."""
    plan = _active()
    if plan is None or plan.point != name:
        return
    if name not in POINTS:
        raise ValueError(f"{ENV} names undeclared fault point '{name}'")
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        due = _hits[name] == plan.hit
    if not due:
        return
    if plan.action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    os._exit(KILLED_EXIT)


def reset_for_tests(text: str | None = None) -> None:
    """Re-read the plan (``text`` overrides the environment) and forget the hit counts."""
    global _plan, _loaded
    with _lock:
        _hits.clear()
        _plan = FaultPlan.parse(text) if text else None
        _loaded = text is not None
