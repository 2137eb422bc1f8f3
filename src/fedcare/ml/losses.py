"""Training and evaluation losses for the three task kinds.

Classification losses are per sample. The Cox partial likelihood of a survival task is not:
each event's term compares the event's risk score with everyone still at risk at its time,
so the loss of a batch couples its rows (see :func:`cox_batch_loss`).

The target's type says the task: class labels are int64, shape (n,); a survival target is
float64, shape (n, 2): column 0 the time (of the event or of the censoring), column 1 the
event indicator (1 event, 0 censored). A survival model has one output, the log relative
hazard (risk score); higher means an earlier event.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

Ties = Literal["efron", "breslow"]

COUPLED_LOSS = (
    "the Cox partial likelihood is not a sum of per-sample losses: each event's term "
    "compares its risk score with every row still at risk at its time"
)


def is_survival_target(targets: torch.Tensor | npt.NDArray[np.generic]) -> bool:
    """Survival targets are (time, event) floats; class labels are integers."""
    if isinstance(targets, torch.Tensor):
        return targets.is_floating_point()
    return bool(np.issubdtype(targets.dtype, np.floating))


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary: BCE on the single logit; multiclass: cross-entropy. Shape = labels' shape."""
    if is_survival_target(labels):
        raise ValueError(f"no per-sample loss for survival targets: {COUPLED_LOSS}")
    if num_classes == 2:
        return F.binary_cross_entropy_with_logits(
            logits[..., 0], labels.to(logits.dtype), reduction="none"
        )
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return flat.view(labels.shape)


def batch_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """The training loss of a batch whose rows carry 0/1 ``weights`` (0: padding).

    Shapes: logits (..., B, outputs), targets (..., B) labels or (..., B, 2) survival
    targets, weights (..., B); returns (...,). Classification: the mean per-sample loss of
    the weighted rows. Survival: the Cox loss of the batch's weighted rows (Efron ties).
    """
    if is_survival_target(targets):
        return cox_batch_loss(logits[..., 0], targets[..., 0], targets[..., 1], weights)
    losses = per_sample_loss(logits, targets, num_classes)
    return (losses * weights).sum(dim=-1) / weights.sum(dim=-1).clamp(min=1.0)


def cox_batch_loss(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    weights: torch.Tensor,
    ties: Ties = "efron",
) -> torch.Tensor:
    """Negative log partial likelihood of the batch, per event: shapes (..., B) -> (...,).

    The risk set of an event is the batch's own weighted rows with a time at or after it
    (stochastic Cox training: the batch stands in for the site's cohort, as in FLamby's
    Fed-TCGA-BRCA baseline). Tied event times follow Efron (or Breslow). Pairwise (B, B)
    masks instead of a sort keep it vmap-able over sites; B is a batch, so B^2 is small.
    A batch without events has loss 0 and no gradient.
    """
    w = weights.to(risk.dtype)
    e = event.to(risk.dtype) * w
    # Shift by the largest present score (a constant per batch: the loss is unchanged).
    present = w > 0
    shift = torch.where(present, risk, torch.full_like(risk, -torch.inf)).amax(-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift)).detach()
    r = torch.where(present, risk - shift, torch.zeros_like(risk))
    ex = torch.exp(r) * w
    # [..., i, j]: row j is at risk when row i has its event.
    at_risk = (time.unsqueeze(-2) >= time.unsqueeze(-1)).to(risk.dtype)
    s_risk = (at_risk * ex.unsqueeze(-2)).sum(-1)
    if ties == "efron":
        # Efron: the l-th of d events tied at a time removes l/d of the tied events' weight.
        tied = (time.unsqueeze(-2) == time.unsqueeze(-1)).to(risk.dtype) * e.unsqueeze(-2)
        d = tied.sum(-1)
        s_tied = (tied * ex.unsqueeze(-2)).sum(-1)
        n = risk.shape[-1]
        earlier = torch.ones(n, n, dtype=risk.dtype, device=risk.device).tril(-1)
        rank = (tied * earlier).sum(-1)
        s_risk = s_risk - rank / d.clamp(min=1.0) * s_tied
    denom = torch.where(e > 0, s_risk, torch.ones_like(s_risk))
    log_lik = (e * (r - torch.log(denom))).sum(-1)
    return -log_lik / e.sum(-1).clamp(min=1.0)


def cox_neg_log_likelihood(
    risk: npt.ArrayLike, time: npt.ArrayLike, event: npt.ArrayLike, ties: Ties = "efron"
) -> float:
    """Negative log partial likelihood of a whole cohort, in float64 (sum over events).

    The exact evaluation counterpart of :func:`cox_batch_loss` (which it equals times the
    number of events on one batch), in O(n log n) by sorting, for test sets of any size.
    """
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    if not e.any():
        return 0.0
    r_shift = r - r.max()
    ex = np.exp(r_shift)
    order = np.argsort(t, kind="stable")
    t_sorted = t[order]
    # Sum of exp(risk) over rows with time >= t, for every row's time.
    tail = np.cumsum(ex[order][::-1])[::-1]
    event_times, inverse, d = np.unique(t[e], return_inverse=True, return_counts=True)
    s_risk = tail[np.searchsorted(t_sorted, event_times, side="left")]
    denom = s_risk[inverse]
    if ties == "efron":
        s_tied = np.bincount(inverse, weights=ex[e], minlength=event_times.size)
        # Each event's rank among the events tied with it (0 .. d-1).
        by_time = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(d)[:-1]])
        rank = np.empty(inverse.size, dtype=np.float64)
        rank[by_time] = np.arange(inverse.size) - np.repeat(starts, d)
        denom = denom - rank / d[inverse] * s_tied[inverse]
    return float(-(r_shift[e] - np.log(denom)).sum())


def probabilities(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary: (batch,) P(class 1); multiclass: (batch, C) softmax."""
    if num_classes == 2:
        return torch.sigmoid(logits[..., 0])
    return torch.softmax(logits, dim=-1)
