"""Noised releases are charged to the site's ledger first, and refused when they cannot be."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fedcare.core.errors import ConfigError, PrivacyBudgetExceededError
from fedcare.core.seeds import SeedStream
from fedcare.privacy.budget import BudgetLedger, JobRef, PrivacyBudget
from fedcare.stats.descriptive_analysis import Describe, Histogram
from fedcare.stats.noise import NoiseSpec, SiteNoise, gaussian_delta, gaussian_sigma
from fedcare.stats.protocol import DisclosureRules, SiteTable, run_in_process
from fedcare.stats.secure import run_secure

OPEN = DisclosureRules(min_cell=1)
BOUNDS = {"age": [0.0, 120.0]}


def sites(n: int = 3, rows: int = 300) -> dict[str, SiteTable]:
    rng = np.random.default_rng(11)
    return {
        f"h{i}": SiteTable(f"h{i}", pd.DataFrame({"age": rng.normal(60, 12, rows)}))
        for i in range(n)
    }


def noises(tmp_path, spec: NoiseSpec, budget: float, job: str = "q1") -> dict[str, SiteNoise]:
    out = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sites()):
        ledger = BudgetLedger(
            tmp_path / f"{name}.sqlite",
            site=name,
            dataset="cohort",
            budget=PrivacyBudget(budget, 1e-5),
        )
        out[name] = SiteNoise(name, spec, ledger, JobRef(job, "plan-hash"), SeedStream(5), i)
    return out


def test_the_analytic_gaussian_sigma_meets_delta_and_beats_the_classic_bound():
    for epsilon, delta in ((0.5, 1e-5), (1.0, 1e-6), (4.0, 1e-5)):
        sigma = gaussian_sigma(2.0, epsilon, delta)
        assert gaussian_delta(sigma, 2.0, epsilon) <= delta
        assert gaussian_delta(sigma * 0.999, 2.0, epsilon) > delta
        if epsilon < 1:
            assert sigma < math.sqrt(2 * math.log(1.25 / delta)) * 2.0 / epsilon


def test_each_answer_is_charged_to_the_ledger_and_the_next_one_over_budget_is_refused(tmp_path):
    spec = NoiseSpec("laplace", epsilon=0.4)
    noise = noises(tmp_path, spec, budget=1.0)
    released: list[str] = []
    result = run_secure(
        Describe("d", ["age"], bounds=BOUNDS),
        sites(),
        OPEN,
        noise=noise,
        on_release=lambda site, q, r: released.append(site),
    )
    for site_noise in noise.values():  # two questions, 0.4 each
        assert site_noise.ledger.job_spend()["q1"] == pytest.approx((0.8, 0.0))
    assert any("noised age:missing, age:n, age:sum with laplace" in n for n in result.notes)
    count = len(released)
    with pytest.raises(PrivacyBudgetExceededError, match=r"site 'h0'.*remaining epsilon=0\.2"):
        run_secure(
            Describe("d", ["age"], bounds=BOUNDS),
            sites(),
            OPEN,
            noise=noise,
            on_release=lambda site, q, r: released.append(site),
        )
    assert len(released) == count  # refused before anything left the site
    assert noise["h0"].ledger.job_spend()["q1"] == pytest.approx((0.8, 0.0))


def test_a_query_that_cannot_fit_is_refused_before_it_starts(tmp_path):
    noise = noises(tmp_path, NoiseSpec("gaussian", epsilon=0.3, delta=1e-7), budget=1.0)
    noise["h0"].check_can_start(3)  # 0.9 fits
    with pytest.raises(PrivacyBudgetExceededError, match=r"site 'h0'.*plans to spend epsilon=1\.2"):
        noise["h0"].check_can_start(4)
    assert noise["h0"].ledger.job_spend() == {}


def test_a_sum_of_unbounded_values_or_a_minimum_cannot_be_noised(tmp_path):
    noise = noises(tmp_path, NoiseSpec("laplace", epsilon=0.5), budget=10.0)
    with pytest.raises(
        ConfigError, match=r"site h0: .*\['age:sum'\].*declare the variables' bounds"
    ):
        run_secure(Describe("d", ["age"]), sites(), OPEN, noise=noise)
    rules = DisclosureRules(min_cell=1, release_extremes=True)
    with pytest.raises(ConfigError, match=r"age:max.*min/max"):
        run_secure(Histogram("h", "age", bins=4, rules=rules), sites(), rules, noise=noise)
    assert noise["h1"].ledger.job_spend() == {}  # nothing was charged


def test_gaussian_noise_is_reproducible_from_the_seed_stream_and_centred_on_the_truth(tmp_path):
    spec = NoiseSpec("gaussian", epsilon=2.0, delta=1e-6)
    edges = list(np.linspace(0, 120, 401))
    exact = run_in_process(Histogram("h", "age", edges=edges), sites(), OPEN)
    runs = [
        run_secure(
            Histogram("h", "age", edges=edges),
            sites(),
            OPEN,
            noise=noises(tmp_path / str(k), spec, 10.0),
        )
        for k in range(2)
    ]
    for run in runs[1:]:
        assert run.tables == runs[0].tables
    error = np.subtract(
        runs[0].tables["groups"]["overall"]["counts"], exact.tables["groups"]["overall"]["counts"]
    )
    # Three sites' noise on each bin: L2 sensitivity sqrt(2) (a bin and the n column).
    sigma = gaussian_sigma(math.sqrt(2.0), 2.0, 1e-6) * math.sqrt(3)
    assert abs(error.mean()) < 4 * sigma / math.sqrt(error.size)
    assert 0.8 * sigma < error.std() < 1.2 * sigma


def test_a_spec_that_is_not_differential_privacy_is_refused():
    with pytest.raises(ConfigError, match="delta must be 0"):
        NoiseSpec("laplace", 1.0, 1e-5)
    with pytest.raises(ConfigError, match=r"delta in \(0, 1\)"):
        NoiseSpec("gaussian", 1.0)
    with pytest.raises(ConfigError, match="epsilon must be positive"):
        NoiseSpec("laplace", 0.0)


def test_noise_and_a_secure_sum_compose_the_noise_each_site_adds_is_in_the_total(tmp_path):
    spec = NoiseSpec("laplace", epsilon=1.0)
    clear = run_secure(
        Describe("d", ["age"], bounds=BOUNDS),
        sites(),
        OPEN,
        noise=noises(tmp_path / "a", spec, 5.0),
    )
    secure = run_secure(
        Describe("d", ["age"], bounds=BOUNDS),
        sites(),
        OPEN,
        noise=noises(tmp_path / "b", spec, 5.0),
        secure="secagg",
    )
    got, want = (
        secure.tables["variables"]["age"]["overall"],
        clear.tables["variables"]["age"]["overall"],
    )
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
    assert got["sd"] == pytest.approx(want["sd"], rel=1e-9)
