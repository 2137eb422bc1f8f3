"""Where the coordinator keeps a site's update between its arrival and the round's end.

An update larger than a few chunks goes to an anonymous scratch file in the run's folder
(created unlinked, so nothing is left behind by a crash, and on the study's disk, not a
RAM-backed /tmp): its chunks are written as they arrive and read back block by block when
the round folds its mean (:mod:`fedcare.runtime.streamed_update`). The bytes sit in the
operating system's page cache, which the kernel may write out and drop under pressure,
never in the coordinator's own memory; nothing is fsynced, since an update is only
needed until the round's checkpoint holds the model it went into. Small updates stay in
memory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedcare.runtime.streamed_update import ChunkStore, MemoryChunks

IN_MEMORY_BYTES = 4 << 20  # updates up to this size are not spooled


class FileChunks:
    """A :class:`~fedcare.runtime.streamed_update.ChunkStore` in an unlinked scratch file."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder, prefix="update-")  # noqa: SIM115

    def write(self, index: int, values: npt.NDArray[np.float32]) -> None:
        data = np.ascontiguousarray(values).view(np.uint8).data
        offset, view = 4 * index, memoryview(data)
        while view:
            written = os.pwrite(self.file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def read(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        out = np.empty(stop - start, np.float32)
        view, offset = memoryview(out.view(np.uint8).data), 4 * start
        while view:
            got = os.preadv(self.file.fileno(), [view], offset)
            if got == 0:
                raise OSError(f"scratch file of an update ended at byte {offset}")
            view, offset = view[got:], offset + got
        return out

    def discard(self) -> None:
        self.file.close()


def update_store(folder: Path, nbytes: int) -> ChunkStore:
    """A store for an update of ``nbytes``: in memory if small, else a scratch file."""
    if nbytes <= IN_MEMORY_BYTES:
        return MemoryChunks(nbytes // 4)
    return FileChunks(folder)
