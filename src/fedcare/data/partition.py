"""Split rows of a centralised dataset across simulated sites: IID or Dirichlet label skew."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError

IndexArray = npt.NDArray[np.int64]


def iid_partition(num_rows: int, num_sites: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle and deal rows into ``num_sites`` nearly equal parts."""
    _check_sites(num_sites, num_rows)
    order = rng.permutation(num_rows).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_sites)]


def dirichlet_label_partition(
    labels: npt.ArrayLike,
    num_sites: int,
    alpha: float,
    rng: np.random.Generator,
    min_per_site: int = 2,
    max_tries: int = 100,
) -> list[IndexArray]:
    """Label skew (Hsu et al. 2019): for each class, site shares ~ Dirichlet(alpha).

    Small alpha gives sites dominated by few classes; large alpha approaches IID. Draws
    are repeated (up to ``max_tries``) until every site holds at least ``min_per_site``
    rows; if none does, the last draw's under-filled sites take rows from the largest.
    """
    y = np.asarray(labels).reshape(-1)
    _check_sites(num_sites, len(y))
    if not alpha > 0:
        raise ConfigError(f"dirichlet partition: alpha must be > 0, found {alpha}")
    if min_per_site * num_sites > len(y):
        raise ConfigError(
            f"dirichlet partition: {len(y)} rows cannot give each of {num_sites} sites "
            f"{min_per_site} rows (alpha={alpha}); use fewer sites or a smaller min_per_site"
        )
    classes = np.unique(y)
    out: list[IndexArray] = []
    for _ in range(max_tries):
        parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(num_sites)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(y == c)).astype(np.int64)
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
            for site, chunk in enumerate(np.split(rows, cuts)):
                parts[site].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_per_site:
            return out
    # Very small alpha with many sites rarely gives every site enough rows by chance; the
    # last draw keeps its skew and under-filled sites take random rows from the largest.
    return _top_up(out, min_per_site, rng)


def _top_up(
    parts: list[IndexArray], min_per_site: int, rng: np.random.Generator
) -> list[IndexArray]:
    """Move rows from the largest sites until every site holds ``min_per_site`` rows."""
    parts = [p.copy() for p in parts]
    for site in range(len(parts)):
        while len(parts[site]) < min_per_site:
            donor = int(np.argmax([len(p) for p in parts]))
            take = int(rng.integers(len(parts[donor])))
            parts[site] = np.sort(np.append(parts[site], parts[donor][take]))
            parts[donor] = np.delete(parts[donor], take)
    return parts


def _check_sites(num_sites: int, num_rows: int) -> None:
    if not isinstance(num_sites, int | np.integer) or isinstance(num_sites, bool):
        raise ConfigError(f"num_sites must be an integer, found {num_sites!r}")
    if num_sites < 1:
        raise ConfigError(f"num_sites must be >= 1, found {num_sites}")
    if num_sites > num_rows:
        raise ConfigError(f"cannot split {num_rows} rows across {num_sites} sites")
