"""Which site identities have a live stream: the second agent of a site is refused.

Two agents holding the same site bundle used to displace each other on every reconnect
(the site dropped out of rounds, neither agent said why). Now the first live stream keeps
the identity; another connection for it is refused while the first is live. "Live" is the
stream's own state (:attr:`fedcare.net.channel.Link.live`): neither end closed it and gRPC
still holds the call, which it drops when keep-alive pings go unanswered, so a vanished
agent's identity is free again after at most the keep-alive time plus its timeout.
"""

from __future__ import annotations

import threading
from typing import Protocol, TypeVar


class Stream(Protocol):
    identity: str

    @property
    def live(self) -> bool: ...


S = TypeVar("S", bound=Stream)


class LiveStreams:
    """Thread-safe map from identity to its one live stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_identity: dict[str, Stream] = {}

    def claim(self, stream: S) -> S | None:
        """Register ``stream`` for its identity; return the live stream that already holds
        it instead (``stream`` is then not registered). A stream that is no longer live is
        replaced."""
        with self._lock:
            held = self._by_identity.get(stream.identity)
            if held is not None and held is not stream and held.live:
                return held  # type: ignore[return-value]  # same identity, same kind
            self._by_identity[stream.identity] = stream
            return None

    def release(self, stream: Stream) -> None:
        """Forget ``stream`` (its call ended); a newer stream of the identity stays."""
        with self._lock:
            if self._by_identity.get(stream.identity) is stream:
                del self._by_identity[stream.identity]

    def holder(self, identity: str) -> Stream | None:
        with self._lock:
            return self._by_identity.get(identity)
