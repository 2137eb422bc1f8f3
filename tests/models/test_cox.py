"""The linear Cox risk score: no intercept, beta = 0 at the start of every run."""

import numpy as np
import pytest
import torch

from fedcare.core.errors import ConfigError
from fedcare.core.seeds import SeedStream
from fedcare.models import build_model
from fedcare.sim.engine import initial_params

COX = "fedcare.models.cox:LinearRisk"


def test_every_run_starts_from_the_null_model() -> None:
    model = build_model(COX, (5,), 2)
    for seed in (0, 1):
        assert not initial_params(model, SeedStream(seed)).any()
    assert [name for name, _ in model.named_parameters()] == ["weight"]


def test_stacked_forward_equals_the_plain_forward() -> None:
    model = build_model(COX, (4,), 2)
    weights = torch.randn(3, 1, 4)
    x = torch.randn(3, 6, 4)
    stacked = model.stacked_forward({"weight": weights}, x)
    for k in range(3):
        with torch.no_grad():
            model.weight.copy_(weights[k])
        np.testing.assert_allclose(stacked[k].detach(), model(x[k]).detach(), atol=1e-6)


def test_a_classification_task_is_refused() -> None:
    with pytest.raises(ConfigError, match="use 'logistic'"):
        build_model(COX, (4,), 3)
