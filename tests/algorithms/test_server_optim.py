import numpy as np
import pytest

from fedcare.algorithms.server_optim import ServerOptimizer

X = np.array([1.0, -1.0], dtype=np.float32)
D = np.array([0.5, 0.2], dtype=np.float32)


def test_plain_sgd_with_lr_one_is_fedavg():
    params, moments = ServerOptimizer("sgd", lr=1.0).step(X, D, {})
    np.testing.assert_allclose(params, [1.5, -0.8])
    assert moments == {}


def test_fedavgm_accumulates_momentum():
    opt = ServerOptimizer("sgd", lr=1.0, momentum=0.9)
    m = opt.init(2)
    p1, m = opt.step(X, D, m)
    p2, m = opt.step(p1, D, m)
    # v1 = D, v2 = 0.9 D + D = 1.9 D
    np.testing.assert_allclose(p2, X + D + 1.9 * D, rtol=1e-6)


def test_fedadam_matches_reddi_et_al_by_hand():
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    moments = opt.init(2)
    params, moments = opt.step(X, D, moments)
    m = 0.1 * D
    v = 0.99 * 1e-6 + 0.01 * D**2
    np.testing.assert_allclose(moments["opt/m"], m, rtol=1e-6)
    np.testing.assert_allclose(moments["opt/v"], v, rtol=1e-5)
    np.testing.assert_allclose(params, X + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)


def test_fedyogi_changes_v_by_sign_of_difference():
    opt = ServerOptimizer("yogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    moments = opt.init(2)
    _, moments = opt.step(X, D, moments)
    v0 = 1e-6
    expected = v0 - 0.01 * D**2 * np.sign(v0 - D**2)
    np.testing.assert_allclose(moments["opt/v"], expected, rtol=1e-5)


def test_fedadagrad_sums_squares():
    opt = ServerOptimizer("adagrad", lr=0.1, tau=1e-3)
    moments = opt.init(2)
    params, moments = opt.step(X, D, moments)
    v = 1e-6 + D**2
    np.testing.assert_allclose(params, X + 0.1 * D / (np.sqrt(v) + 1e-3), rtol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer("rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        ServerOptimizer("sgd", lr=0.0)
