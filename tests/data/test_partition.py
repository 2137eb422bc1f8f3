import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.core.errors import ConfigError
from fedcare.data.partition import dirichlet_label_partition, iid_partition


@given(st.integers(10, 500), st.integers(1, 10), st.integers(0, 1000))
def test_iid_assigns_every_row_exactly_once(n, sites, seed):
    parts = iid_partition(n, sites, np.random.default_rng(seed))
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@settings(max_examples=30)
@given(st.integers(2, 8), st.floats(0.05, 10.0), st.integers(0, 1000))
def test_dirichlet_assigns_every_row_exactly_once(sites, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, 3, 600)
    parts = dirichlet_label_partition(
        labels, sites, alpha, np.random.default_rng(seed), min_per_site=1
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(600))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.repeat([0, 1], 500)

    def spread(alpha: float) -> float:
        parts = dirichlet_label_partition(labels, 5, alpha, np.random.default_rng(0))
        return float(np.std([labels[p].mean() for p in parts]))

    assert spread(0.1) > 0.25
    assert spread(100.0) < 0.05


def test_impossible_partitions_are_config_errors():
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_label_partition(np.zeros(10), 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="across 20 sites"):
        iid_partition(10, 20, np.random.default_rng(0))
