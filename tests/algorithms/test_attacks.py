import numpy as np
import pytest

from fedcare.algorithms.attacks import AttackSpec, attack_update, choose_attackers, flip_labels
from fedcare.core.errors import ConfigError


def test_update_attacks():
    delta = np.array([1.0, -2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert attack_update(delta, AttackSpec("sign_flip", strength=3.0), rng).tolist() == [-3.0, 6.0]
    assert attack_update(delta, AttackSpec("scale", strength=10.0), rng).tolist() == [10.0, -20.0]
    noise = attack_update(np.zeros(10_000, np.float32), AttackSpec("noise", strength=2.0), rng)
    assert noise.std() == pytest.approx(2.0, rel=0.05)


def test_label_flipping_and_attacker_choice():
    assert flip_labels(np.array([0, 1, 1]), 2).tolist() == [1, 0, 0]
    assert flip_labels(np.array([0, 4, 2]), 5).tolist() == [4, 0, 2]
    chosen = choose_attackers([f"s{i}" for i in range(10)], 0.2, np.random.default_rng(0))
    assert len(chosen) == 2
    with pytest.raises(ConfigError, match="fraction"):
        AttackSpec("sign_flip", fraction=1.5)
