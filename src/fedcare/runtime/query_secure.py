"""A deployed query's secure sum: one ``sum`` question's releases through real SecAgg.

Under a plan with ``secure: secagg`` the coordinator opens a fresh session with each
``sum`` question (:func:`new_session`, sent in the question). Each site computes its
release as in the clear, turns it into the limb digits the simulator's secure sum feeds
SecAgg (:func:`fedcare.stats.secure.site_digits`) and runs a
:class:`~fedcare.secagg.SecAggClient` on them; its first message (its public keys) also
carries the release's layout (names and shapes: fixed by the question, not data). The
coordinator relays the rounds (:class:`QuerySecureSum`, around the training job's
:class:`~fedcare.runtime.secure_round.SecureSumCollector`) and learns only the digit sums,
which :func:`~fedcare.stats.secure.totals_from_digits` turns back into exact totals:
the same totals, bit for bit, as the simulator's ``secure: secagg``. A site lost
mid-sum aborts it; the question is asked again, in a new session, once every site is back.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.secure_round import Addressed, SecureSumCollector
from fedcare.runtime.secure_wire import step_of
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.ring import FixedPointRing
from fedcare.stats.protocol import Values
from fedcare.stats.secure import Layout, LimbCode, limb_code, totals_from_digits

NO_DEADLINE = math.inf  # a query waits for its sites (a lost one aborts the sum instead)


def new_session(run_id: str, question: int) -> bytes:
    """A fresh SecAgg session for one asking of question ``question``."""
    salt = secrets.token_bytes(16)
    return hashlib.sha256(f"fedcare/query/secagg/{run_id}/{question}/".encode() + salt).digest()


def query_code(sites: int) -> LimbCode:
    return limb_code("secagg", sites)


def query_secagg_config(session: bytes, sites: int, length: int) -> SecAggConfig:
    """The protocol parameters of one question's sum; the simulator's
    (:class:`fedcare.stats.secure.SecureSummer`): every site a member, a majority threshold,
    integer digits (scale 1) that no sum of ``sites`` digits can wrap."""
    code = query_code(sites)
    ids = tuple(range(sites))
    return SecAggConfig(
        session_id=session,
        client_ids=ids,
        vector_length=length,
        threshold=sites // 2 + 1,
        ring=FixedPointRing(clip=float((1 << code.bits) - 1), max_clients=sites, scale=1.0),
    )


def layout_header(layout: Layout) -> list[list[Any]]:
    return [[key, list(shape)] for key, shape in layout]


def _entry(pair: Any) -> tuple[str, tuple[int, ...]] | None:
    """One ``[name, shape]`` of a layout, or None if it is not one."""
    if not (isinstance(pair, list) and len(pair) == 2):
        return None
    key, shape = pair
    if not isinstance(key, str) or not isinstance(shape, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    return key, tuple(shape)


def read_layout(env: Envelope, site: str) -> Layout:
    """The layout a site's first SecAgg message announces; ProtocolError names the site."""
    raw = env.header.get("layout")
    entries = [_entry(pair) for pair in raw] if isinstance(raw, list) else [None]
    layout = tuple(e for e in entries if e is not None)
    if len(layout) != len(entries):
        raise ProtocolError(
            f"secure sum: site '{site}' announced no valid 'layout' (a list of [name, shape] "
            f"with shapes of non-negative integers), found {raw!r:.200}"
        )
    return layout


class QuerySecureSum:
    """The coordinator's side of one question's SecAgg over the plan's sites."""

    def __init__(self, session: bytes, sites: Sequence[str], run_id: str, question: int) -> None:
        self.session = session
        self.sites = tuple(sites)
        self.run_id = run_id
        self.question = question
        self.layout: Layout | None = None
        self.collector: SecureSumCollector | None = None  # opened by the first site's keys

    @property
    def done(self) -> bool:
        return self.collector is not None and self.collector.done

    def receive(self, site: str, env: Envelope) -> tuple[list[tuple[str, Envelope]], Layout | None]:
        """One site's SecAgg message: what to relay, and the layout it announced (its
        first message) or None. ProtocolError for anything out of place."""
        member = self.sites.index(site)
        announced = None
        if step_of(env) == "advertise_keys":
            announced = read_layout(env, site)
            if self.layout is None:
                self.layout = announced
                size = sum(math.prod(shape) for _, shape in announced)
                length = query_code(len(self.sites)).limbs * size
                config = query_secagg_config(self.session, len(self.sites), length)
                self.collector = SecureSumCollector(
                    config, NO_DEADLINE, NO_DEADLINE, self.run_id, self.question, 0
                )
            elif announced != self.layout:
                raise ProtocolError(
                    f"secure sum: site '{site}' releases {list(announced)}, another site "
                    f"{list(self.layout)}"
                )
        if self.collector is None:
            raise ProtocolError(f"secure sum: site '{site}' spoke before any site sent its keys")
        out: list[Addressed] = self.collector.receive(member, env, 0.0)
        return [(self.sites[m], e) for m, e in out], announced

    def total(self) -> Values:
        """The exact totals, once every site's masked digits are summed."""
        assert self.collector is not None and self.layout is not None and self.done
        result = self.collector.server.result
        if result.included != frozenset(range(len(self.sites))):
            raise ProtocolError(
                f"question {self.question}: the secure sum lost sites "
                f"{sorted(set(self.sites) - {self.sites[i] for i in result.included})}; "
                "its totals would be partial"
            )
        sums = np.asarray(result.ring_total, dtype=np.uint32).view(np.int32).astype(np.int64)
        return totals_from_digits(self.layout, sums, query_code(len(self.sites)))
