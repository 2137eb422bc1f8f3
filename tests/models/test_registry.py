import pytest
import torch

from fedcare.core.errors import ConfigError
from fedcare.ml.trainer import LocalTrainer
from fedcare.models import build_model, model_names


def test_registered_models_build_for_binary_and_multiclass():
    assert set(model_names()) == {"logistic", "mlp", "cnn"}
    assert build_model("logistic", (13,), 2)(torch.zeros(5, 13)).shape == (5, 1)
    assert build_model("mlp", (8,), 3, hidden=(4,))(torch.zeros(2, 8)).shape == (2, 3)
    assert build_model("cnn", (3, 28, 28), 5)(torch.zeros(2, 3, 28, 28)).shape == (2, 5)


def test_a_user_model_by_import_path_trains_through_vmap():
    model = build_model("tests.models.user_model:TinyNet", (6,), 2, width=3)
    trainer = LocalTrainer(model, 2)
    assert trainer.mode == "batched"
    assert not trainer.stacked  # no stacked_forward: the vmap path


def test_model_errors_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'mlp'"):
        build_model("mpl", (3,), 2)
    with pytest.raises(ConfigError, match="cannot import module"):
        build_model("no_such_pkg.mod:Net", (3,), 2)
    with pytest.raises(ConfigError, match="cannot build it"):
        build_model("mlp", (3,), 2, depth=3)
