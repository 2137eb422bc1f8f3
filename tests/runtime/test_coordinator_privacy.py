"""Client-level DP at the deployed coordinator: secret noise, checkpoints, refusals.

The release itself is compared with the simulator's in test_protocol_study; here the
scenarios a deployment adds: the noise key is the coordinator's secret, a resumed run
continues the accountant, and what the runtime cannot protect yet is refused up front.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.core.errors import ConfigError
from fedcare.runtime.checkpoint import load_checkpoint, save_checkpoint
from fedcare.runtime.coordinator import CoordinatorMachine, Phase
from fedcare.runtime.rounds import RunPlan
from tests.conftest import make_sites
from tests.runtime.test_protocol_study import deploy, heart_plan, start_params

DP = {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}}


@pytest.fixture(scope="module")
def toy():
    return make_sites([40, 24, 12, 30], num_features=5, test_rows=12, seed=1)


def finished(net):
    for name in net.sites:
        net.connect(name)
    net.run()
    assert net.coordinator.phase is Phase.FINISHED
    return net.coordinator


def test_without_a_given_seed_the_noise_is_the_coordinators_secret(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", DP, rounds=2)
    reproducible = finished(deploy(toy, plan, tmp_path / "a"))
    first = finished(deploy(toy, plan, tmp_path / "b", noise_seed=None))
    second = finished(deploy(toy, plan, tmp_path / "c", noise_seed=None))
    assert first.noise_seed != plan.seed and first.noise_seed != second.noise_seed
    # Knowing the plan (and its seed) does not give the noise: all three models differ.
    for a, b in [(reproducible, first), (first, second)]:
        assert np.abs(a.final_params - b.final_params).max() > 1e-3
    # The guarantee does not depend on the key: same epsilon either way.
    assert [r["epsilon"] for r in first.history] == [r["epsilon"] for r in second.history]


def test_a_resumed_dp_run_continues_its_noise_and_accountant(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", DP, rounds=3)
    reference = finished(deploy(toy, plan, tmp_path / "reference", noise_seed=12345))
    net = deploy(toy, plan, tmp_path / "crash", noise_seed=12345)
    for name in net.sites:
        net.connect(name)
    net.run(stop=lambda: len(net.coordinator.history) == 2)
    state, extra = net.coordinator.checkpoint()
    save_checkpoint(tmp_path / "ckpt", state, {}, extra)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.extra["privacy"]["noise_seed"] == 12345
    net.coordinator = CoordinatorMachine.restore(plan, ckpt.state, ckpt.extra)
    assert net.coordinator.epsilon() == pytest.approx(reference.history[1]["epsilon"])
    net.queue.clear()
    resumed = finished(net)
    np.testing.assert_allclose(resumed.final_params, reference.final_params, atol=1e-6)
    assert [r["epsilon"] for r in resumed.history] == [r["epsilon"] for r in reference.history]


def test_a_checkpoint_without_the_accountant_is_refused_for_a_dp_plan(toy, tmp_path):
    plan = heart_plan(toy, "fedavg", DP, rounds=2)
    net = deploy(toy, plan, tmp_path)
    state, extra = net.coordinator.checkpoint()
    del extra["privacy"]
    with pytest.raises(ConfigError, match="no privacy accountant"):
        CoordinatorMachine.restore(plan, state, extra)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (
            {
                "dp": {
                    "mode": "local",
                    "clip_norm": 0.5,
                    "noise_multiplier": 1.0,
                    "adaptive_clip": {"target_quantile": 0.5},
                }
            },
            "adaptive clipping needs the coordinator",
        ),
    ],
    ids=["adaptive-local"],
)
def test_privacy_the_runtime_cannot_give_is_refused_not_ignored(toy, params, reason):
    plan = heart_plan(toy, "fedavg", params, rounds=1)
    with pytest.raises(ConfigError, match=reason):
        CoordinatorMachine("run-1", plan, start_params(toy, plan))
    with pytest.raises(ConfigError, match=reason):  # a site refuses such a plan as well
        RunPlan.from_dict(plan.to_dict())


def test_the_plan_hash_covers_the_dp_settings(toy):
    weak = heart_plan(toy, "fedavg", {"dp": {"noise_multiplier": 0.5, "clip_norm": 0.5}})
    strong = heart_plan(toy, "fedavg", {"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}})
    assert weak.hash != strong.hash
    assert RunPlan.from_dict(strong.to_dict()).dp == strong.dp
