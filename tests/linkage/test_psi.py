"""Diffie-Hellman PSI: the result equals a plain set intersection, and each party's view."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, DataValidationError, ProtocolError
from fedcare.data.vertical import HEART_ID_RULES, vertical_heart
from fedcare.linkage import (
    ElementBatch,
    IdentifierRules,
    IntersectionSize,
    MatchPositions,
    PsiConfig,
    PsiParty,
    decode,
    encode,
    keyed_identifiers,
    psi_results,
    run_psi,
)
from fedcare.linkage.group import key_from_bytes
from tests.linkage.conftest import SECRET, keyed

NAMES = ("clinic", "laboratory", "cardiology")


def _inputs(sets):
    return {name: keyed(name, ids) for name, ids in zip(NAMES, sets, strict=False)}


def _linked(result, ids):
    return [ids[row] for row in result.rows]


@settings(max_examples=20, deadline=None)
@given(
    universe=st.lists(st.integers(0, 40), min_size=3, max_size=25, unique=True),
    data=st.data(),
    parties=st.sampled_from([2, 3]),
    mode=st.sampled_from(["label", "all", "cardinality"]),
)
def test_psi_equals_a_plain_set_intersection(universe, data, parties, mode):
    shared = data.draw(st.sets(st.sampled_from(universe), min_size=1))
    sets = []
    for _ in range(parties):
        own = data.draw(st.sets(st.sampled_from(universe)))
        ids = [f"id{v}" for v in sorted(shared | own)]
        sets.append(data.draw(st.permutations(ids)))
    expected = set.intersection(*(set(s) for s in sets))
    config = PsiConfig(NAMES[:parties], mode=mode, batch_size=data.draw(st.integers(1, 8)))
    results = psi_results(config, _inputs(sets))
    label = results["clinic"]
    assert label.size == len(expected)
    assert label.set_sizes == {n: len(s) for n, s in zip(NAMES, sets, strict=False)}
    if mode == "cardinality":
        assert all(r.rows is None and r.size == len(expected) for r in results.values())
        return
    assert set(_linked(label, sets[0])) == expected
    others = [results[n] for n in NAMES[1:parties]]
    if mode == "label":
        assert all(r.size is None and r.rows is None for r in others)
    else:  # every party has its rows of the joined table, in the same joint order
        joint = _linked(label, sets[0])
        assert all(_linked(r, s) == joint for r, s in zip(others, sets[1:], strict=False))


@pytest.mark.parametrize("parties", [2, 3])
def test_the_heart_tables_link_to_exactly_the_reference_rows(parties):
    study = vertical_heart(parties=parties, overlap=0.7, seed=2)
    rules = IdentifierRules.from_mapping(HEART_ID_RULES)
    inputs = {
        p.name: keyed_identifiers([p.frame[p.id_column].tolist()], rules, SECRET, party=p.name)
        for p in study.parties
    }
    config = PsiConfig(tuple(inputs), mode="all", batch_size=128)
    results = psi_results(config, inputs)
    keys = [
        [rules.apply(v) for v in p.frame[p.id_column].iloc[results[p.name].rows]]
        for p in study.parties
    ]
    assert all(k == keys[0] for k in keys)  # row k of every party is the same patient
    assert sorted(keys[0]) == study.reference["patient"].tolist()


def _views(mode, sets, batch_size=4):
    seen = []
    run_psi(
        PsiConfig(NAMES[: len(sets)], mode=mode, batch_size=batch_size), _inputs(sets), seen.append
    )
    return seen


@pytest.mark.parametrize("mode", ["label", "all", "cardinality"])
def test_no_message_carries_an_identifier_or_its_keyed_hash(mode):
    sets = [[f"MRN-{i:05d}" for i in range(0, 30)], [f"MRN-{i:05d}" for i in range(10, 40)]]
    secrets = set()
    for name, ids in zip(NAMES, sets, strict=False):
        secrets |= {i.encode() for i in ids}
        secrets |= {bytes(row[:16]) for row in keyed(name, ids).keys}
    for message in _views(mode, sets):
        wire = encode(message)
        back = decode(wire)
        if isinstance(message, MatchPositions):  # arrays compare element-wise
            assert back.sender == message.sender and back.recipient == message.recipient
            assert np.array_equal(back.positions, message.positions)
        else:
            assert back == message
        assert not any(s in wire for s in secrets)


def test_in_cardinality_mode_the_label_party_gets_its_set_back_in_an_order_free_of_its_rows():
    clinic = [f"p{i}" for i in range(40)]
    lab = [f"p{i}" for i in range(20, 60)]
    keys = {n: key_from_bytes(bytes([i + 1]) * 32) for i, n in enumerate(NAMES[:2])}

    def returned(mode, rows):
        seen = []
        config = PsiConfig(NAMES[:2], mode=mode, batch_size=8)
        run_psi(config, {"clinic": keyed("clinic", rows), "laboratory": keyed("laboratory", lab)},
                seen.append, keys)  # fmt: skip
        back = [
            m
            for m in seen
            if isinstance(m, ElementBatch) and m.recipient == "clinic" and m.owner == "clinic"
        ]
        return b"".join(m.elements for m in back)

    shuffled = list(np.random.default_rng(0).permutation(clinic))
    # Same keys, rows in another order: cardinality returns byte-identical elements ...
    assert returned("cardinality", clinic) == returned("cardinality", shuffled)
    # ... while the linking modes return them in row order, so the label party can map them.
    assert returned("label", clinic) != returned("label", shuffled)


def test_the_other_parties_learn_only_set_sizes_in_label_mode():
    seen = _views("label", [["a", "b", "c"], ["b", "c", "d", "e"], ["c", "b"]])
    to_others = [m for m in seen if m.recipient != "clinic"]
    assert to_others and all(isinstance(m, ElementBatch) for m in to_others)
    assert not any(isinstance(m, MatchPositions | IntersectionSize) for m in seen)


@pytest.mark.parametrize("mode", ["label", "all", "cardinality"])
def test_disjoint_sets_are_a_clear_error(mode):
    parties = run_psi(PsiConfig(NAMES[:2], mode=mode), _inputs([["a", "b"], ["c"]]))
    with pytest.raises(
        DataValidationError, match=r"site 'clinic': no patient is held by every party"
    ):
        _ = parties["clinic"].result
    if mode != "label":
        with pytest.raises(DataValidationError, match="same identifier rules and study secret"):
            _ = parties["laboratory"].result


def _two_parties():
    config = PsiConfig(NAMES[:2], mode="all", batch_size=2)
    inputs = _inputs([["a", "b", "c"], ["b", "c"]])
    return (
        config,
        PsiParty(config, "clinic", inputs["clinic"]),
        PsiParty(config, "laboratory", inputs["laboratory"]),
    )


def test_batches_out_of_order_or_from_the_wrong_party_are_refused():
    _, clinic, lab = _two_parties()
    first, second = list(clinic.start())
    with pytest.raises(ProtocolError, match=r"batch 1 of 'clinic'.s set out of order .expected 0."):
        list(lab.receive(second))
    forged = ElementBatch("cardiology", "laboratory", "clinic", 0, False, first.elements)
    with pytest.raises(ProtocolError, match=r"'cardiology' may not send 'clinic'.s set here"):
        list(lab.receive(forged))
    with pytest.raises(ProtocolError, match="multiple of 32 bytes, found 5"):
        list(lab.receive(ElementBatch("clinic", "laboratory", "clinic", 0, True, b"12345")))


def test_a_finished_party_refuses_further_messages_and_bad_positions_are_refused():
    _, clinic, lab = _two_parties()
    with pytest.raises(ProtocolError, match="no result yet"):
        _ = lab.result
    pending = [*clinic.start(), *lab.start()]
    answers = []
    while pending:
        message = pending.pop(0)
        target = clinic if message.recipient == "clinic" else lab
        if isinstance(message, MatchPositions):
            answers.append(message)
            continue
        pending += list(target.receive(message))
    (positions,) = answers
    with pytest.raises(ProtocolError, match=r"distinct and in 0..1"):
        list(lab.receive(MatchPositions("clinic", "laboratory", np.array([0, 7]))))
    list(lab.receive(positions))
    assert lab.result.size == 2
    with pytest.raises(ProtocolError, match="in state finished"):
        list(lab.receive(positions))


def test_impossible_configurations_are_refused():
    with pytest.raises(ConfigError, match="at least two parties"):
        PsiConfig(("clinic",))
    with pytest.raises(ConfigError, match="distinct"):
        PsiConfig(("a", "a"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        PsiConfig(("a", "b"), mode="everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"given 'b'.s identifiers"):
        PsiParty(PsiConfig(("a", "b")), "a", keyed("b", ["x"]))
    with pytest.raises(ConfigError, match=r"missing \['b'\]"):
        run_psi(PsiConfig(("a", "b")), {"a": keyed("a", ["x"])})


def test_routes_visit_every_other_party_once_and_end_at_the_label_party():
    config = PsiConfig(("L", "A", "B", "C"))
    assert config.route("L") == ("A", "B", "C", "L")
    assert config.route("B") == ("C", "A", "L")
    assert config.previous("B", "A") == "C" and config.previous("L", "A") == "L"
