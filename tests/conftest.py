"""Shared fixtures: small federated datasets built in memory, fast to train on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from fedcare.data.base import FederatedDataset, SiteData

# Property tests check results, never time: Hypothesis' per-example deadline is a
# wall-clock assertion that fails on a loaded 2-core CI machine (one example took 0.9 s).
settings.register_profile("fedcare", deadline=None)
settings.load_profile("fedcare")


def make_sites(
    sizes: list[int],
    num_features: int = 6,
    num_classes: int = 2,
    seed: int = 0,
    test_rows: int = 40,
) -> FederatedDataset:
    """Linearly separable-ish sites with a per-site shift, like hospitals with different case mixes."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(num_features, num_classes))
    sites = []
    for i, n in enumerate(sizes):
        shift = rng.normal(scale=0.5, size=num_features)

        def draw(rows: int, shift: np.ndarray = shift) -> tuple[np.ndarray, np.ndarray]:
            x = (rng.normal(size=(rows, num_features)) + shift).astype(np.float32)
            y = (x @ teacher + rng.normal(scale=0.5, size=(rows, num_classes))).argmax(axis=1)
            return x, y.astype(np.int64)

        x_tr, y_tr = draw(n)
        x_te, y_te = draw(test_rows)
        sites.append(SiteData(f"site{i}", x_tr, y_tr, x_te, y_te))
    return FederatedDataset(
        name="toy",
        sites=sites,
        task="binary" if num_classes == 2 else "multiclass",
        num_classes=num_classes,
        input_shape=(num_features,),
    )


@pytest.fixture
def toy_dataset() -> FederatedDataset:
    return make_sites([50, 31, 12, 77])
