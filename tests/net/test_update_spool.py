"""The coordinator's scratch store for updates: what goes in comes back, nothing stays."""

from __future__ import annotations

import numpy as np

from fedcare.net.update_spool import IN_MEMORY_BYTES, FileChunks, update_store
from fedcare.runtime.streamed_update import MemoryChunks


def test_chunks_written_in_pieces_read_back_in_other_pieces(tmp_path):
    values = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    store = FileChunks(tmp_path)
    for start in range(0, 1000, 333):
        store.write(start, values[start : start + 333])
    np.testing.assert_array_equal(store.read(0, 1000), values)
    np.testing.assert_array_equal(store.read(517, 731), values[517:731])
    store.discard()


def test_the_scratch_file_never_shows_in_the_folder(tmp_path):
    store = FileChunks(tmp_path / "spool")
    store.write(0, np.ones(10, np.float32))
    assert list((tmp_path / "spool").iterdir()) == []  # unlinked from the start
    store.discard()


def test_small_updates_stay_in_memory_large_ones_go_to_disk(tmp_path):
    assert isinstance(update_store(tmp_path, IN_MEMORY_BYTES), MemoryChunks)
    large = update_store(tmp_path, IN_MEMORY_BYTES + 4)
    assert isinstance(large, FileChunks)
    large.discard()
