import numpy as np
import pytest
import torch
from torch import nn

from fedcare.core.errors import LayoutMismatchError
from fedcare.ml.torch_adapter import layout_of, load_vector, module_to_vector, vector_to_state_dict


def test_state_dict_round_trip_is_lossless_including_integer_buffers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 1))
    model(torch.randn(4, 1, 3, 3))  # bumps num_batches_tracked and running stats
    layout = layout_of(model)
    vector = module_to_vector(model, layout)
    restored = vector_to_state_dict(vector, layout)
    for name, tensor in model.state_dict().items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor)
    assert not {s.name: s.trainable for s in layout.specs}["1.num_batches_tracked"]


def test_load_vector_writes_into_the_module():
    model = nn.Linear(3, 2)
    layout = layout_of(model)
    load_vector(model, np.arange(layout.size, dtype=np.float32), layout)
    assert model.weight[0, 0].item() == 0.0
    assert model.bias[1].item() == 7.0


def test_float64_models_are_refused_with_advice():
    with pytest.raises(LayoutMismatchError, match=r"model\.float\(\)"):
        layout_of(nn.Linear(2, 2).double())
