"""The vertical heart study and the synthetic identifier stream."""

import re

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.vertical import SyntheticIdentifiers, vertical_heart, write_tables


def _key(raw: str) -> str:
    return re.sub(r"\D", "", raw)


def _keys(table):
    return [_key(v) for v in table.frame[table.id_column]]


@pytest.mark.parametrize("parties", [2, 3])
def test_each_party_holds_its_own_columns_and_only_the_clinic_the_label(parties):
    study = vertical_heart(parties=parties, overlap=0.7, seed=0)
    assert [p.name for p in study.parties][:2] == ["clinic", "laboratory"]
    assert study.label_party.label == "disease"
    assert all(p.label is None and "disease" not in p.frame for p in study.parties[1:])
    columns = [c for p in study.parties for c in p.features]
    assert len(columns) == len(set(columns)) == 13  # every heart feature at exactly one party


@pytest.mark.parametrize("parties", [2, 3])
def test_the_shared_patients_are_the_overlap_and_every_party_has_others(parties):
    study = vertical_heart(parties=parties, overlap=0.7, seed=1)
    keys = [set(_keys(p)) for p in study.parties]
    shared = set.intersection(*keys)
    assert len(shared) == round(0.7 * 740) == len(study.reference)
    assert sorted(shared) == study.reference["patient"].tolist()
    assert all(len(k) > len(shared) for k in keys)  # patients the others do not have
    assert all(len(set(_keys(p))) == p.num_rows for p in study.parties)  # no duplicates


def test_identifiers_are_written_differently_but_normalise_to_one_key():
    study = vertical_heart(parties=3, overlap=0.7, seed=0)
    firsts = {p.name: p.frame[p.id_column].iloc[0] for p in study.parties}
    assert firsts["clinic"].startswith("MRN-")
    assert "-" in firsts["laboratory"] and firsts["cardiology"].startswith("mrn ")
    raw = [set(p.frame[p.id_column]) for p in study.parties]
    assert not raw[0] & raw[1] and not raw[1] & raw[2]  # no raw string matches across parties


def test_the_reference_is_the_join_of_the_parties_tables_on_the_key():
    study = vertical_heart(parties=2, overlap=0.7, seed=3)
    clinic, lab = study.parties
    left = clinic.frame.assign(patient=_keys(clinic)).drop(columns=[clinic.id_column])
    right = lab.frame.assign(patient=_keys(lab)).drop(columns=[lab.id_column])
    joined = left.merge(right, on="patient").sort_values("patient", ignore_index=True)
    assert joined[study.reference.columns].equals(study.reference)


def test_row_orders_differ_between_parties_and_seeds():
    a, b = vertical_heart(seed=0), vertical_heart(seed=1)
    clinic, lab = a.parties
    shared = set(a.reference["patient"])
    order_clinic = [k for k in _keys(clinic) if k in shared]
    order_lab = [k for k in _keys(lab) if k in shared]
    assert order_clinic != order_lab and sorted(order_clinic) == sorted(order_lab)
    assert not a.reference["patient"].equals(b.reference["patient"])
    assert vertical_heart(seed=0).reference.equals(a.reference)  # seeded


def test_all_740_rows_with_the_flamby_split_are_used_at_full_overlap():
    study = vertical_heart(parties=2, overlap=1.0, seed=0)
    assert len(study.reference) == 740
    assert study.reference["split"].value_counts().to_dict() == {"train": 486, "test": 254}
    assert study.reference["disease"].isin([0, 1]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"parties": 4}, "parties must be 2 or 3"), ({"overlap": 0.0}, "overlap must be")],
)
def test_impossible_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        vertical_heart(**kwargs)


def test_synthetic_identifiers_have_the_chosen_overlap_and_no_duplicates():
    ids = SyntheticIdentifiers([5_000, 3_000, 4_000], shared=1_200, seed=7)
    parties = [[i for batch in ids.batches(p, batch_size=999) for i in batch] for p in range(3)]
    assert [len(p) for p in parties] == [5_000, 3_000, 4_000]
    assert all(len(set(p)) == len(p) for p in parties)
    sets = [set(p) for p in parties]
    assert set.intersection(*sets) == ids.shared_identifiers()
    assert len(ids.shared_identifiers()) == 1_200
    assert not (sets[0] & sets[1]) - ids.shared_identifiers()  # no other pairwise overlap


def test_synthetic_rows_are_in_a_different_order_per_party():
    ids = SyntheticIdentifiers([1_000, 1_000], shared=1_000, seed=0)
    first, second = (next(ids.batches(p, batch_size=1_000)) for p in (0, 1))
    assert sorted(first) == sorted(second) and first != second


def test_synthetic_settings_are_checked():
    with pytest.raises(ConfigError, match="shared must be between 0 and party 1"):
        SyntheticIdentifiers([10, 5], shared=6)
    with pytest.raises(ConfigError, match="at least 2 parties"):
        SyntheticIdentifiers([10], shared=1)
    assert np.all(SyntheticIdentifiers([3, 3], shared=0).indices(1, 0, 3) >= 3)


def test_tables_written_to_csv_read_back_with_identifiers_as_text(tmp_path):
    study = vertical_heart(parties=3, overlap=0.5, seed=4)
    paths = write_tables(study, str(tmp_path / "tables"))
    assert sorted(paths) == ["cardiology", "clinic", "laboratory"]
    lab = pd.read_csv(paths["laboratory"], dtype={"patient_ref": str}, keep_default_na=False)
    assert lab["patient_ref"].tolist() == study.party("laboratory").frame["patient_ref"].tolist()
    with pytest.raises(ConfigError, match="no party 'pharmacy'"):
        study.party("pharmacy")
