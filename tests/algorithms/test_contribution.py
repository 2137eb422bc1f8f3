import math

import numpy as np
import pytest

from fedcare.algorithms.contribution import (
    CachedUtility,
    exact_shapley,
    leave_one_out,
    monte_carlo_shapley,
)

SITES = ["a", "b", "c"]


def glove_game(coalition: frozenset[str]) -> float:
    """One left glove (a) and two right gloves (b, c): a pair is worth 1.

    Known Shapley values: a = 2/3, b = c = 1/6.
    """
    return float("a" in coalition and ("b" in coalition or "c" in coalition))


def test_exact_shapley_of_the_glove_game():
    values = exact_shapley(SITES, glove_game)
    assert values["a"] == pytest.approx(2 / 3)
    assert values["b"] == pytest.approx(1 / 6)
    assert values["c"] == pytest.approx(1 / 6)


def test_an_additive_game_gives_each_site_its_own_worth_and_values_sum_to_the_total():
    worth = {"a": 0.1, "b": 0.25, "c": -0.05, "d": 0.4}

    def additive(coalition: frozenset[str]) -> float:
        return 0.5 + sum(worth[s] for s in coalition)

    values = exact_shapley(list(worth), additive)
    assert values == pytest.approx(worth)
    assert sum(values.values()) == pytest.approx(additive(frozenset(worth)) - additive(frozenset()))


def test_leave_one_out_of_the_glove_game():
    # Without a nobody pairs up; without b (or c) the other right glove still pairs.
    assert leave_one_out(SITES, glove_game) == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_monte_carlo_converges_to_exact_and_reuses_coalitions():
    utility = CachedUtility(glove_game)
    estimates = monte_carlo_shapley(SITES, utility, permutations=600, rng=np.random.default_rng(0))
    exact = exact_shapley(SITES, glove_game)
    for site in SITES:
        assert abs(estimates[site].value - exact[site]) < 4 * estimates[site].stderr + 1e-9
        assert abs(estimates[site].value - exact[site]) < 0.05
    assert utility.evaluations <= 2 ** len(SITES)  # each coalition trained at most once
    assert utility.calls > utility.evaluations


def test_stratified_antithetic_sampling_beats_plain_sampling():
    worth = {"a": 0.3, "b": 0.1, "c": 0.05, "d": 0.02}

    def concave(coalition: frozenset[str]) -> float:
        # Diminishing returns: joining early is worth much more than joining late.
        return math.sqrt(sum(worth[s] for s in coalition))

    exact = exact_shapley(list(worth), concave)

    def worst_error(**options: bool) -> float:
        errors = []
        for seed in range(20):
            est = monte_carlo_shapley(
                list(worth), concave, permutations=8, rng=np.random.default_rng(seed), **options
            )
            errors.append(max(abs(est[s].value - exact[s]) for s in worth))
        return max(errors)

    assert worst_error(stratified=True, antithetic=True) < worst_error() / 3


def test_one_block_has_no_stderr_and_budgets_round_up_to_whole_blocks():
    est = monte_carlo_shapley(SITES, glove_game, permutations=1, rng=np.random.default_rng(0))
    assert math.isnan(est["a"].stderr)
    calls = CachedUtility(glove_game)
    monte_carlo_shapley(
        SITES, calls, permutations=5, rng=np.random.default_rng(0), stratified=True, antithetic=True
    )
    # One block of 3 shifts x 2 directions = 6 orders of 3 sites, plus u(all) and u(empty).
    assert calls.calls == 6 * 3 + 2


def test_bad_players_and_utilities_are_refused():
    with pytest.raises(ValueError, match="unique"):
        exact_shapley(["a", "a"], glove_game)
    with pytest.raises(ValueError, match="the limit"):
        exact_shapley([str(i) for i in range(13)], glove_game)
    with pytest.raises(ValueError, match="finite"):
        exact_shapley(SITES, lambda c: float("nan"))
