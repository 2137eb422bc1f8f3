import numpy as np
import torch
from torch import nn

from fedcare.ml.importance import site_importance
from fedcare.ml.torch_adapter import layout_of, module_to_vector


def model_using_only_feature_0() -> nn.Module:
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[4.0, 0.0, 0.0]])
        model.bias.zero_()
    return model


def site(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
    return x, (x[:, 0] > 0).long()


def test_only_the_feature_the_model_uses_matters_and_site_counts_add_up():
    model = model_using_only_feature_0()
    layout = layout_of(model)
    params = module_to_vector(model, layout)
    rng = np.random.default_rng(0)
    a = site_importance(model, layout, params, *site(rng, 200), 2, np.random.default_rng(1))
    b = site_importance(model, layout, params, *site(rng, 100), 2, np.random.default_rng(2))
    total = a + b
    assert total.rows == 300
    assert total.accuracy_drop[0] > 0.3
    np.testing.assert_allclose(total.accuracy_drop[1:], 0.0)
    # The combined importance weighs each site by its rows, as the pooled rows would.
    expected = (a.accuracy_drop[0] * 200 + b.accuracy_drop[0] * 100) / 300
    assert total.accuracy_drop[0] == expected
