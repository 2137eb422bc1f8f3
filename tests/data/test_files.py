"""The shipped data is checked against SHA256SUMS before anyone trains on it."""

import hashlib
import shutil
from pathlib import Path

import pytest

from fedcare.core.errors import DataValidationError
from fedcare.data.files import data_folder, verify_folder


@pytest.mark.parametrize("name", ["heart-disease", "medmnist", "tcga-brca"])
def test_shipped_folders_match_their_checksums(name):
    folder = data_folder(name)
    assert folder.joinpath("SHA256SUMS").is_file()


def test_heart_folder_ships_the_attribution_and_split():
    folder = data_folder("heart-disease")
    assert "Janosi" in folder.joinpath("heart-disease.names").read_text(encoding="latin-1")
    assert folder.joinpath("flamby_split.csv").is_file()


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    (tmp_path / "a.data").write_bytes(b"1,2,3\n")
    digest = hashlib.sha256(b"1,2,3\n").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  a.data\n")
    return tmp_path


def test_an_edited_file_is_refused_by_name(small_folder):
    verify_folder(small_folder, "demo")
    (small_folder / "a.data").write_bytes(b"1,2,4\n")
    with pytest.raises(DataValidationError, match=r"file 'demo/a.data'.*does not match"):
        verify_folder(small_folder, "demo")


def test_a_missing_file_or_checksum_list_is_refused(small_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_folder, copy)
    (copy / "a.data").unlink()
    with pytest.raises(DataValidationError, match="missing"):
        verify_folder(copy, "demo")
    (small_folder / "SHA256SUMS").unlink()
    with pytest.raises(DataValidationError, match="SHA256SUMS"):
        verify_folder(small_folder, "demo")
