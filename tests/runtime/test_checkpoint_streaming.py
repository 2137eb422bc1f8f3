"""Checkpoints are written straight from the arrays, hashed as they are written: a valid
safetensors file, the same digest as before, and never the whole file in memory."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save

from fedcare.runtime.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    content_digest,
    read_verified_safetensors,
    save_released_model,
    write_atomic_safetensors,
)

POINT = "coordinator.checkpoint.write"


def mixed_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "params": rng.normal(size=1001).astype(np.float32),
        "opt/v": rng.normal(size=(3, 5)),  # float64, 2-D
        "site/b/steps": np.arange(7, dtype=np.int64),
        "site/a/mask": np.array([True, False, True]),
        "empty": np.zeros(0, dtype=np.float32),
        "big_endian": np.arange(4, dtype=">f4"),
    }


def header_of(path: Path) -> dict:
    raw = path.read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])


def test_the_file_is_safetensors_with_the_arrays_metadata_and_their_digest(tmp_path):
    arrays = mixed_arrays()
    meta = {"round": "4", "history": json.dumps([{"loss": 0.5}]), "note": 'a "quoted" digest'}
    target = tmp_path / "checkpoint.safetensors"
    digest = write_atomic_safetensors(target, arrays, meta, prefix=".c-", write_point=POINT)

    loaded = load_file(str(target))  # safetensors' own reader accepts the file
    assert sorted(loaded) == sorted(arrays)
    for name, value in arrays.items():
        assert loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
    recorded = header_of(target)["__metadata__"]
    assert recorded == {**meta, DIGEST_KEY: digest}
    # The digest is the layout-independent one, computed over what safetensors reads back.
    assert digest == content_digest(loaded, meta)
    tensors, metadata = read_verified_safetensors(target, "checkpoint")
    assert metadata[DIGEST_KEY] == digest and sorted(tensors) == sorted(arrays)


def test_the_digest_matches_a_file_safetensors_would_have_written(tmp_path):
    arrays = {k: v for k, v in mixed_arrays().items() if k != "big_endian"}
    meta = {"round": "2"}
    target = tmp_path / "c.safetensors"
    digest = write_atomic_safetensors(target, arrays, meta, prefix=".c-", write_point=POINT)
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_bytes(save(arrays, metadata={**meta, DIGEST_KEY: digest}))
    tensors, _ = read_verified_safetensors(theirs, "checkpoint")  # same digest verifies
    assert content_digest(tensors, meta) == digest


def test_a_changed_byte_in_the_data_is_refused(tmp_path):
    target = tmp_path / "c.safetensors"
    write_atomic_safetensors(
        target, mixed_arrays(), {"round": "1"}, prefix=".c-", write_point=POINT
    )
    raw = bytearray(target.read_bytes())
    raw[-3] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="changed or damaged"):
        read_verified_safetensors(target, "checkpoint")


def test_an_array_of_a_dtype_safetensors_cannot_hold_is_refused_by_name(tmp_path):
    arrays = {"params": np.zeros(3, np.float32), "phase": np.zeros(2, np.complex64)}
    with pytest.raises(CheckpointError, match="'phase' has dtype complex64"):
        write_atomic_safetensors(
            tmp_path / "c.safetensors", arrays, {}, prefix=".c-", write_point=POINT
        )
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_writing_a_large_model_allocates_no_copy_of_it(tmp_path):
    params = np.ones(4 << 20, dtype=np.float32)  # 16 MiB
    tracemalloc.start()  # numpy and bytes objects are both traced
    try:
        write_atomic_safetensors(
            tmp_path / "c.safetensors", {"params": params}, {"round": "1"}, prefix=".c-",
            write_point=POINT,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Serialising in memory first cost one whole copy (and hashing tobytes() another).
    assert peak < params.nbytes // 16, peak / params.nbytes


def test_a_released_model_is_written_like_a_checkpoint_without_a_copy(tmp_path):
    params = np.arange(4 << 20, dtype=np.float32)  # 16 MiB
    target = tmp_path / "model.safetensors"
    tracemalloc.start()
    try:
        digest = save_released_model(target, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < params.nbytes // 16, peak / params.nbytes
    np.testing.assert_array_equal(load_file(str(target))["params"], params)
    tensors, metadata = read_verified_safetensors(target, "released model")
    assert metadata == {DIGEST_KEY: digest} and list(tensors) == ["params"]
    assert list(tmp_path.iterdir()) == [target]  # written beside it, then renamed over it
