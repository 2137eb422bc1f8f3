"""Secure sums give the plain sums (counts exactly) and the coordinator only totals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.stats.descriptive_analysis import Correlation, CrossTab, Describe, Histogram
from fedcare.stats.protocol import (
    DisclosureRules,
    Question,
    Release,
    SiteTable,
    answer,
    combine,
    run_in_process,
)
from fedcare.stats.secure import LimbCode, SecureSummer, run_secure
from fedcare.stats.site_tables import tcga_brca_site_tables
from fedcare.stats.survival import KaplanMeier


def sites(sizes: list[int], seed: int = 3) -> dict[str, SiteTable]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        frame = pd.DataFrame(
            {
                "age": rng.normal(60, 12, n) + 1e5,
                "bmi": rng.normal(26, 4, n),
                "sex": rng.choice(["F", "M"], n),
                "stage": rng.choice(["I", "II", "III"], n),
            }
        )
        out[f"h{i}"] = SiteTable(f"h{i}", frame)
    return out


@settings(max_examples=30)
@given(
    rows=st.lists(
        st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=6,
    ),
    bits=st.sampled_from([12, 27]),
)
def test_limb_digits_add_up_to_the_sum_of_the_fixed_point_values(rows, bits):
    code = LimbCode(bits)
    digits = sum(code.encode(np.array(r), "test").astype(np.int64) for r in rows)
    total = code.decode(np.asarray(digits), 3)
    exact = [sum(round(r[i] * 2**32) for r in rows) / 2**32 for i in range(3)]
    assert total.tolist() == exact
    integers = [[float(round(x)) for x in r] for r in rows]
    counts = code.decode(sum(code.encode(np.array(r), "t").astype(np.int64) for r in integers), 3)
    assert counts.tolist() == np.sum(integers, axis=0).tolist()  # counts come back exact


@pytest.mark.parametrize("kind", ["secagg", "ckks"])
def test_a_secure_sum_equals_the_plain_one_and_counts_are_exact(kind):
    tables = sites([40, 55, 23, 31])
    rules = DisclosureRules()
    question = Question(
        "d",
        "describe.sums",
        {"variables": ["age", "bmi"], "by": "sex", "levels": ["F", "M"]},
        "sum",
    )
    releases = {s: answer(question, t, rules) for s, t in tables.items()}
    plain = combine(question, releases).total
    secure = SecureSummer(kind).combine(question, releases).total
    assert plain is not None and secure is not None
    assert set(secure) == set(plain)
    for key, value in plain.items():
        if key.endswith((":n", ":missing", ":suppressed")):
            assert secure[key].tolist() == value.tolist()
        else:  # each site's value to 2**-33: far below float64's own rounding at 1e5 * n
            np.testing.assert_allclose(secure[key], value, rtol=1e-13)


def test_whole_analyses_through_secagg_give_the_plain_results():
    tables = sites([60, 45, 80])
    rules = DisclosureRules()
    for analysis in (
        lambda: Describe("d", ["age", "bmi"], by="stage", levels=["I", "II", "III"]),
        lambda: Histogram("h", "bmi", edges=list(range(10, 45, 5)), by="sex", levels=["F", "M"]),
        lambda: CrossTab("c", "stage", ["I", "II", "III"], "sex", ["F", "M"]),
        lambda: Correlation("r", ["age", "bmi"]),
    ):
        plain = run_in_process(analysis(), tables, rules)
        secure = run_secure(analysis(), tables, rules, secure="secagg")
        assert _close(secure.tables, plain.tables)


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-12, atol=0))
    return a == b


def test_under_a_secure_sum_the_coordinator_learns_how_many_sites_withheld_not_which():
    tables = sites([12, 90, 90])
    question = Question(
        "c",
        "describe.crosstab",
        {"row": "stage", "row_levels": ["I", "II", "III"], "col": "sex", "col_levels": ["F", "M"]},
        "sum",
    )
    releases = {s: answer(question, t, DisclosureRules()) for s, t in tables.items()}
    assert any(line for line in releases["h0"].suppressed)  # the small site withheld cells
    combined = SecureSummer("secagg").combine(question, releases)
    assert combined.suppressed and not any("h0" in line for line in combined.suppressed)
    plain = combine(question, releases)
    assert any(line.startswith("h0: ") for line in plain.suppressed)


def test_a_secure_sum_needs_two_sites_and_per_site_questions_stay_per_site():
    tables = sites([30])
    with pytest.raises(ConfigError, match="at least 2 sites"):
        run_secure(Describe("d", ["age"]), tables, DisclosureRules(), secure="secagg")
    with pytest.raises(ConfigError, match="secure must be one of none, secagg, ckks"):
        run_secure(Describe("d", ["age"]), tables, DisclosureRules(), secure="paillier")  # type: ignore[arg-type]
    question = Question(
        "d", "describe.extremes", {"variables": ["age"], "by": None, "levels": []}, "per_site"
    )
    releases = {
        "a": Release({"age:min": np.array([1.0])}),
        "b": Release({"age:min": np.array([2.0])}),
    }
    assert SecureSummer("secagg").combine(question, releases).per_site is not None


def test_secure_kaplan_meier_on_tcga_brca_equals_the_plain_one_and_releases_no_small_count():
    tables = tcga_brca_site_tables()
    grid = [round(365.25 / 12 * k, 2) for k in range(1, 12 * 12)]
    rules = DisclosureRules(min_cell=5)
    releases: list[tuple[str, Question, Release]] = []
    plain = run_in_process(KaplanMeier("km", mode="grid", grid=grid), tables, rules)
    secure = run_secure(
        KaplanMeier("km", mode="grid", grid=grid),
        tables,
        rules,
        secure="secagg",
        on_release=lambda *r: releases.append(r),
    )
    assert secure.tables == plain.tables  # counts exact, so every derived number too
    released = np.concatenate(
        [
            np.ravel(v)
            for _, _, r in releases
            for k, v in r.values.items()
            if k in ("at_risk", "events")
        ]
    )
    assert released.size > 1000
    assert not ((released > 0) & (released < 5)).any()


def test_releases_that_do_not_line_up_are_refused_naming_both_sites():
    question = Question("d", "describe.sums", {}, "sum")
    releases = {
        "north": Release({"counts": np.zeros((2, 3))}),
        "south": Release({"counts": np.zeros((3, 2))}),
    }
    with pytest.raises(
        ProtocolError, match=r"site south released \[\('counts', \(3, 2\)\)\], site north"
    ):
        SecureSummer("secagg").combine(question, releases)
