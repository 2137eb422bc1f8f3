"""Resources with a ``close``: usable in a ``with`` block that closes them on the way out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self


class Closing(ABC):
    """A resource released by :meth:`close`; as a context manager it is closed on exit,
    whether the block ends normally or by an exception."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
