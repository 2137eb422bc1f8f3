"""Identifier rules and the keyed hash every PSI input goes through."""

import pytest

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.linkage import IdentifierRules
from fedcare.linkage.normalise import keyed_hashes


def test_different_spellings_of_one_number_normalise_to_one_key():
    rules = IdentifierRules(digits_only=True)
    assert {rules.apply(v) for v in ["MRN-01234567", "0123-4567  ", "mrn 0123 4567"]} == {
        "01234567"
    }


def test_rules_apply_in_the_declared_order():
    assert IdentifierRules(case="upper", remove="-/").apply("  ab-12/c ") == "AB12C"
    assert IdentifierRules(strip_leading_zeros=True, digits_only=True).apply("id 007") == "7"
    assert IdentifierRules(strip=False).apply(" x ") == " x "


def test_rules_from_a_config_name_an_unknown_key_and_a_bad_value():
    assert IdentifierRules.from_mapping({"digits_only": True}) == IdentifierRules(digits_only=True)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['digit_only'\]"):
        IdentifierRules.from_mapping({"digit_only": True}, where="study.yaml linkage.rules")
    with pytest.raises(ConfigError, match="strip must be true or false, found 'yes'"):
        IdentifierRules.from_mapping({"strip": "yes"})
    with pytest.raises(ConfigError, match="case must be one of"):
        IdentifierRules(case="title")  # type: ignore[arg-type]


def test_the_keyed_hash_depends_on_the_study_secret(secret):
    rules = IdentifierRules()
    one = keyed_hashes(["A1"], rules, secret, party="p", file=None, column="id")
    other = keyed_hashes(
        ["A1"], rules, b"another secret of 32 bytes......", party="p", file=None, column="id"
    )
    assert len(one[0]) == 32 and one != other


def test_an_identifier_that_normalises_to_nothing_names_its_row_but_not_its_value(secret):
    with pytest.raises(DataValidationError) as caught:
        keyed_hashes(["12", "MRN-"], IdentifierRules(digits_only=True), secret,
                     party="laboratory", file="lab.csv", column="patient_ref", first_row=10)  # fmt: skip
    message = str(caught.value)
    assert "site 'laboratory', file 'lab.csv', column 'patient_ref'" in message
    assert "data row 12 has no identifier" in message and "MRN-" not in message
