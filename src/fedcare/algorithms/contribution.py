"""How much each site contributes: Shapley values and leave-one-out over a coalition utility.

The caller supplies ``utility(coalition) -> float`` (train a model on those sites and
score it); these functions only decide which coalitions to ask about and combine the
answers. Training is the expensive part, so every utility is memoised per coalition:
wrap it once in :class:`CachedUtility`, pass the same object to every function, and read
``evaluations`` for the number of distinct coalitions actually trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Utility = Callable[[frozenset[str]], float]

MAX_EXACT_PLAYERS = 12  # 2^12 = 4096 coalitions, each a full federated training run


class CachedUtility:
    """Memoises a utility per coalition and counts the distinct coalitions evaluated."""

    def __init__(self, utility: Utility) -> None:
        self._utility = utility
        self._cache: dict[frozenset[str], float] = {}
        self.calls = 0

    def __call__(self, coalition: frozenset[str]) -> float:
        self.calls += 1
        if coalition not in self._cache:
            value = float(self._utility(coalition))
            if not math.isfinite(value):
                raise ValueError(
                    f"utility of coalition {sorted(coalition)} is {value}; it must be finite"
                )
            self._cache[coalition] = value
        return self._cache[coalition]

    @property
    def evaluations(self) -> int:
        """Distinct coalitions whose utility was computed."""
        return len(self._cache)


@dataclass(frozen=True)
class ShapleyEstimate:
    """Monte-Carlo Shapley value and its standard error (NaN with fewer than 2 samples)."""

    value: float
    stderr: float


def _cached(utility: Utility) -> CachedUtility:
    return utility if isinstance(utility, CachedUtility) else CachedUtility(utility)


def _check_players(players: Sequence[str]) -> list[str]:
    names = list(players)
    if not names:
        raise ValueError("contribution needs at least one site")
    if len(set(names)) != len(names):
        dup = sorted({p for p in names if names.count(p) > 1})
        raise ValueError(f"site names must be unique, found duplicates {dup}")
    return names


def exact_shapley(players: Sequence[str], utility: Utility) -> dict[str, float]:
    """Shapley values from all 2^n coalitions (n <= 12).

    phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (u(S + i) - u(S)).
    """
    names = _check_players(players)
    n = len(names)
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact Shapley over {n} sites needs 2^{n} = {2**n} trained coalitions; the limit "
            f"is {MAX_EXACT_PLAYERS} sites. Use monte_carlo_shapley instead."
        )
    u = _cached(utility)
    masks = np.arange(1 << n)
    values = np.array(
        [u(frozenset(names[j] for j in range(n) if m >> j & 1)) for m in range(1 << n)],
        dtype=np.float64,
    )
    sizes = np.array([m.bit_count() for m in range(1 << n)])
    size_weight = np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    )
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        without = masks[(masks >> i) & 1 == 0]
        gains = values[without | (1 << i)] - values[without]
        out[name] = float(np.sum(size_weight[sizes[without]] * gains))
    return out


def leave_one_out(players: Sequence[str], utility: Utility) -> dict[str, float]:
    """u(all) - u(all but i): what the federation loses without each site."""
    names = _check_players(players)
    u = _cached(utility)
    everyone = frozenset(names)
    full = u(everyone)
    return {name: full - u(everyone - {name}) for name in names}


def monte_carlo_shapley(
    players: Sequence[str],
    utility: Utility,
    *,
    permutations: int,
    rng: np.random.Generator,
    truncation_tolerance: float = 0.0,
    antithetic: bool = False,
    stratified: bool = False,
) -> dict[str, ShapleyEstimate]:
    """Permutation-sampling Shapley (TMC-Shapley, Ghorbani & Zou 2019), with variance reduction.

    For each random order of the sites, a site's marginal gain is u(predecessors + site) -
    u(predecessors); its estimate is the mean over orders. Orders come in blocks:

    * ``stratified`` adds every cyclic shift of a random order, so each site appears at
      every position equally often. A site's gain depends mostly on how many sites came
      before it (joining nobody is worth far more than joining everybody), so this removes
      the largest source of variance.
    * ``antithetic`` pairs each order with its reverse.

    ``permutations`` is rounded up to whole blocks (n orders when stratified, times two
    when antithetic). The stderr is computed over block means, the independent samples
    (NaN with one block). With ``truncation_tolerance`` > 0, an order stops once
    |u(all) - u(prefix)| < tolerance and the remaining sites get 0: cheaper, slightly biased.
    """
    names = _check_players(players)
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, found {permutations!r}")
    if not 0.0 <= truncation_tolerance < math.inf:
        raise ValueError(
            f"truncation tolerance must be finite and >= 0, found {truncation_tolerance}"
        )
    u = _cached(utility)
    n = len(names)
    full = u(frozenset(names))
    empty = u(frozenset())
    block = (n if stratified else 1) * (2 if antithetic else 1)
    blocks = -(-permutations // block)
    orders: list[npt.NDArray[np.intp]] = []
    for _ in range(blocks):
        base = rng.permutation(n)
        shifts = [np.roll(base, s) for s in range(n)] if stratified else [base]
        for order in shifts:
            orders.extend((order, order[::-1]) if antithetic else (order,))
    gains = np.zeros((len(orders), n), dtype=np.float64)
    for t, order in enumerate(orders):
        prefix: frozenset[str] = frozenset()
        previous = empty
        for j in order:
            if abs(full - previous) < truncation_tolerance:
                break  # the rest of this order gains 0
            prefix = prefix | {names[j]}
            current = u(prefix)
            gains[t, j] = current - previous
            previous = current
    samples = gains.reshape(blocks, block, n).mean(axis=1)
    means = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / math.sqrt(blocks) if blocks > 1 else np.full(n, np.nan)
    return {
        name: ShapleyEstimate(float(means[i]), float(stderr[i])) for i, name in enumerate(names)
    }
