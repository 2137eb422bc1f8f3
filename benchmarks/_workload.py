"""The simulator-speed workload, in numpy only so Flower's own venv can build it too.

Sites draw features from a site-shifted Gaussian and labels from one shared random
2-layer teacher, so the task is learnable and the same for every engine.
"""

from __future__ import annotations

import numpy as np


def make_workload(
    num_sites: int,
    samples: int = 200,
    features: int = 32,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Per-site (x, y) for train and test; y in {0, 1} as int64."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(features, 16)) / np.sqrt(features)
    w2 = rng.normal(size=16)
    total = round(samples / (1 - test_fraction))
    x = rng.normal(size=(num_sites, total, features)).astype(np.float32)
    x += rng.normal(scale=0.3, size=(num_sites, 1, features)).astype(np.float32)
    logits = np.tanh(x @ w1) @ w2
    y = (logits > np.median(logits)).astype(np.int64)
    train = [(x[k, :samples], y[k, :samples]) for k in range(num_sites)]
    test = [(x[k, samples:], y[k, samples:]) for k in range(num_sites)]
    return train, test
