"""Reading a party's identifier column from its table, and the input errors found there."""

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.linkage import IdentifierRules, read_keyed_identifiers
from fedcare.linkage.identifiers import keyed_identifiers, read_identifier_batches

RULES = IdentifierRules(digits_only=True)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_give_the_same_keys_in_row_order(tmp_path, secret, suffix):
    frame = pd.DataFrame({"mrn": ["MRN-007", "MRN-010", "MRN-003"], "age": [50, 61, 47]})
    path = tmp_path / f"clinic{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    keyed = read_keyed_identifiers(path, "mrn", RULES, secret, party="clinic", batch_size=2)
    expected = keyed_identifiers([["007", "010", "003"]], RULES, secret, party="clinic")
    assert keyed.num_rows == 3 and np.array_equal(keyed.keys, expected.keys)


def test_leading_zeros_survive_csv_reading(tmp_path):
    (tmp_path / "t.csv").write_text("id\n007\nNA\n", encoding="utf-8")
    assert list(read_identifier_batches(tmp_path / "t.csv", "id", party="p")) == [["007", "NA"]]


def test_a_missing_identifier_column_names_party_file_and_the_columns_found(tmp_path, secret):
    path = tmp_path / "lab.csv"
    pd.DataFrame({"patient": ["1"], "chol": [200]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as caught:
        read_keyed_identifiers(path, "patient_ref", RULES, secret, party="laboratory")
    message = str(caught.value)
    assert f"site 'laboratory', file '{path}', column 'patient_ref'" in message
    assert "['patient', 'chol']" in message


def test_duplicate_identifiers_after_normalisation_name_both_rows(tmp_path, secret):
    path = tmp_path / "lab.csv"
    pd.DataFrame({"id": ["0012-345", "9", "MRN 0012345"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"data rows 1 and 3 have the same identifier"):
        read_keyed_identifiers(path, "id", RULES, secret, party="laboratory")


def test_an_empty_table_a_missing_file_and_an_unknown_format_are_refused(tmp_path, secret):
    (tmp_path / "empty.csv").write_text("id\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="no identifiers to link"):
        read_keyed_identifiers(tmp_path / "empty.csv", "id", RULES, secret, party="p")
    with pytest.raises(DataValidationError, match="identifier table not found"):
        read_keyed_identifiers(tmp_path / "nope.csv", "id", RULES, secret, party="p")
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(DataValidationError, match=r"expected .csv or .parquet, found .xlsx"):
        read_keyed_identifiers(tmp_path / "t.xlsx", "id", RULES, secret, party="p")


def test_a_short_study_secret_is_refused():
    with pytest.raises(ConfigError, match="at least 16 random bytes, found 5 bytes"):
        keyed_identifiers([["1"]], RULES, b"short", party="p")
