"""The Cox partial-likelihood loss: exact against lifelines, and fit for batched training."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import CoxPHFitter
from torch.func import grad, vmap

from fedcare.ml.losses import batch_loss, cox_batch_loss, cox_neg_log_likelihood, per_sample_loss


def tied_table(seed: int, n: int = 120, distinct_times: int = 6) -> pd.DataFrame:
    """Covariates with a real effect and only a handful of distinct times: heavy ties."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    hazard = np.exp(x @ np.array([0.8, -0.5, 0.0]))
    time = np.ceil(rng.exponential(1.0 / hazard) * distinct_times / 2).clip(1, distinct_times)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["T"] = time
    frame["E"] = (rng.uniform(size=n) < 0.7).astype(int)
    return frame


@pytest.mark.parametrize("seed", [0, 1])
def test_cohort_loss_is_lifelines_efron_log_likelihood(seed: int) -> None:
    frame = tied_table(seed)
    fitted = CoxPHFitter().fit(frame, "T", "E")
    risk = frame[["a", "b", "c"]].to_numpy() @ fitted.params_.to_numpy()
    nll = cox_neg_log_likelihood(risk, frame["T"], frame["E"])
    assert nll == pytest.approx(-fitted.log_likelihood_, rel=1e-12)


def test_batch_loss_on_the_whole_cohort_is_the_cohort_loss_per_event() -> None:
    frame = tied_table(2)
    risk = np.random.default_rng(2).normal(size=len(frame))
    events = int(frame["E"].sum())
    for ties in ("efron", "breslow"):
        batch = cox_batch_loss(
            torch.tensor(risk),
            torch.tensor(frame["T"].to_numpy()),
            torch.tensor(frame["E"].to_numpy()),
            torch.ones(len(frame), dtype=torch.float64),
            ties=ties,
        )
        expected = cox_neg_log_likelihood(risk, frame["T"], frame["E"], ties=ties) / events
        assert float(batch) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    times=st.lists(st.integers(1, 4), min_size=2, max_size=12),
    data=st.data(),
)
def test_padding_rows_are_ignored(times: list[int], data: st.DataObject) -> None:
    """Rows with weight 0 (a short last batch's padding) change neither loss nor gradient."""
    n = len(times)
    events = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    risk = torch.tensor(
        data.draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)), dtype=torch.float64
    )
    t, e = torch.tensor(times, dtype=torch.float64), torch.tensor(events, dtype=torch.float64)
    w = torch.tensor(keep, dtype=torch.float64)
    kept = w > 0

    def loss_all(r: torch.Tensor) -> torch.Tensor:
        return cox_batch_loss(r, t, e, w)

    def loss_kept(r: torch.Tensor) -> torch.Tensor:
        return cox_batch_loss(r, t[kept], e[kept], torch.ones(int(kept.sum()), dtype=r.dtype))

    assert float(loss_all(risk)) == pytest.approx(float(loss_kept(risk[kept])), abs=1e-12)
    g_all = grad(loss_all)(risk)
    assert torch.allclose(g_all[kept], grad(loss_kept)(risk[kept]), atol=1e-12)
    assert torch.all(g_all[~kept] == 0)


def test_a_batch_without_events_has_no_loss_and_no_gradient() -> None:
    risk = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    loss = cox_batch_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), torch.ones(3))
    loss.backward()
    assert loss.item() == 0.0
    assert risk.grad is not None and torch.all(risk.grad == 0)


def test_batch_loss_vmaps_over_sites_like_a_loop() -> None:
    """The batched trainer maps the loss over sites: each site's rows are its own risk set."""
    rng = np.random.default_rng(4)
    risk = torch.tensor(rng.normal(size=(3, 8)))
    targets = torch.tensor(
        np.stack([rng.integers(1, 4, size=(3, 8)), rng.integers(0, 2, size=(3, 8))], axis=-1),
        dtype=torch.float64,
    )
    w = torch.ones(3, 8, dtype=torch.float64)
    mapped = vmap(lambda r, y, wt: batch_loss(r[:, None], y, wt, 2))(risk, targets, w)
    looped = [batch_loss(risk[k][:, None], targets[k], w[k], 2) for k in range(3)]
    assert torch.allclose(mapped, torch.stack(looped), atol=1e-12)


def test_survival_targets_have_no_per_sample_loss() -> None:
    with pytest.raises(ValueError, match="not a sum of per-sample losses"):
        per_sample_loss(torch.zeros(4, 1), torch.zeros(4, 2, dtype=torch.float64), 2)
