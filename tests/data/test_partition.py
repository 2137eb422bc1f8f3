"""IID and Dirichlet label-skew partitions: every row assigned to exactly one site."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.data.partition import dirichlet_label_partition, iid_partition


def rng(seed: int) -> np.random.Generator:
    return SeedStream(seed).generator("partition")


@given(st.integers(10, 500), st.integers(1, 10), st.integers(0, 1000))
def test_iid_assigns_every_row_exactly_once_in_near_equal_parts(n, sites, seed):
    parts = iid_partition(n, sites, rng(seed))
    assert len(parts) == sites
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 8),
    st.floats(0.05, 10.0),
    st.integers(0, 1000),
    st.integers(2, 6),
    st.integers(1, 3),
)
def test_dirichlet_assigns_every_row_exactly_once(sites, alpha, seed, classes, min_per_site):
    labels = np.random.default_rng(seed).integers(0, classes, 600)
    parts = dirichlet_label_partition(labels, sites, alpha, rng(seed), min_per_site=min_per_site)
    assert len(parts) == sites
    assert sorted(np.concatenate(parts).tolist()) == list(range(600))
    assert min(map(len, parts)) >= min_per_site


def test_same_seed_same_partition():
    labels = np.repeat([0, 1, 2], 100)
    a = dirichlet_label_partition(labels, 4, 0.5, rng(7))
    b = dirichlet_label_partition(labels, 4, 0.5, rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.repeat([0, 1], 500)

    def spread(alpha: float) -> float:
        parts = dirichlet_label_partition(labels, 5, alpha, rng(0))
        return float(np.std([labels[p].mean() for p in parts]))

    assert spread(0.1) > 0.25
    assert spread(100.0) < 0.05


def test_impossible_partitions_are_config_errors_naming_alpha_and_sites():
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_label_partition(np.zeros(10), 2, 0.0, rng(0))
    with pytest.raises(ConfigError, match="across 20 sites"):
        iid_partition(10, 20, rng(0))
    with pytest.raises(ConfigError, match=r"5 sites.*alpha=0.5"):
        dirichlet_label_partition(np.zeros(12), 5, 0.5, rng(0), min_per_site=3)


@pytest.mark.parametrize(
    ("sites", "alpha", "minimum", "classes"), [(8, 0.0508, 3, 2), (10, 0.01, 15, 2)]
)
def test_tiny_alpha_with_many_sites_still_gives_every_site_its_minimum(
    sites: int, alpha: float, minimum: int, classes: int
) -> None:
    # Found by Hypothesis: a tiny alpha almost never fills every site by chance; the last
    # draw's under-filled sites take rows from the largest instead of the study failing.
    labels = np.random.default_rng(0).integers(0, classes, 200)
    parts = dirichlet_label_partition(labels, sites, alpha, rng(0), min_per_site=minimum)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert min(map(len, parts)) >= minimum
    assert max(map(len, parts)) > 2 * minimum  # still skewed, not an even split
