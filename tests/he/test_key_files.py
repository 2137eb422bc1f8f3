"""The shared CKKS key set on disk: owner-only, never overwritten, errors name the file."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.he.ckks import generate_keys
from fedcare.he.key_files import read_key_set, write_key_set
from fedcare.he.secure_sum import HeSite


def test_a_key_set_written_and_read_back_decrypts_what_the_original_encrypted(tmp_path):
    keys = generate_keys()
    path = tmp_path / "study-he.key"
    write_key_set(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = read_key_set(path)
    assert again.key_id == keys.key_id
    payload = HeSite(keys).encrypt_update(np.array([0.5, -1.25], dtype=np.float32), 2.0)
    opened = HeSite(again).open_aggregate(payload)
    np.testing.assert_allclose(opened.weighted_sum, [1.0, -2.5], atol=1e-5)


def test_an_existing_key_file_is_never_overwritten(tmp_path):
    path = tmp_path / "study-he.key"
    write_key_set(path, generate_keys())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        write_key_set(path, generate_keys())
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_key_set_is_refused_by_name(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        read_key_set(junk)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_set(tmp_path / "missing.key")
