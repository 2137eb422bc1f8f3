"""One run state value, and its checkpoint.

:class:`RunState` is everything a run needs to continue: the server state (parameters,
optimizer moments, algorithm arrays, round), the state the driver holds per site, the
history so far and the privacy accountants. The round loop returns a new value each round
and never changes an old one. A checkpoint is this value serialised: arrays in one
safetensors file, the rest as JSON in its metadata (never pickle), written and read by
:func:`fedcare.runtime.checkpoint.save_run_state` / ``load_run_state``; the format is
documented in ``docs/checkpoint-format.md`` and shared with the deployed coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from fedcare.core.records import ServerState, SiteState

HISTORY = "history"
PRIVACY = "privacy"
SAMPLE_PRIVACY = "sample_privacy"

Json = dict[str, Any]


@dataclass(frozen=True)
class RunState:
    """The whole state of a run between two rounds (immutable).

    ``site_states``: what the driver keeps per site (the simulator: every site's own
    state; a coordinator: none, sites keep theirs); ``history``: one JSON record per round
    done; ``privacy`` / ``sample_privacy``: the client-level and DP-SGD accountants' state
    (JSON, None without them).
    """

    server: ServerState
    site_states: Mapping[str, SiteState] = field(default_factory=dict)
    history: tuple[Json, ...] = ()
    privacy: Json | None = None
    sample_privacy: Json | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site_states", MappingProxyType(dict(self.site_states)))

    @property
    def round(self) -> int:
        return self.server.round

    def extra(self) -> Json:
        """The JSON part of the checkpoint."""
        out: Json = {HISTORY: list(self.history)}
        if self.privacy is not None:
            out[PRIVACY] = self.privacy
        if self.sample_privacy is not None:
            out[SAMPLE_PRIVACY] = self.sample_privacy
        return out

    @classmethod
    def from_parts(
        cls, server: ServerState, site_states: Mapping[str, SiteState], extra: Json
    ) -> RunState:
        """The value :meth:`extra` and a checkpoint's arrays were written from."""
        return cls(
            server=server,
            site_states=site_states,
            history=tuple(extra.get(HISTORY, [])),
            privacy=extra.get(PRIVACY),
            sample_privacy=extra.get(SAMPLE_PRIVACY),
        )
