"""Evaluation statistics that add up across sites.

A site never sends predictions or scores; it sends counts: a confusion matrix, a loss
sum and, for AUC, histograms of its scores split by true class. Summing them at the
coordinator gives the exact pooled accuracy and balanced accuracy, and a pooled ROC AUC
whose only approximation is the histogram bin width (never the mean of per-site AUCs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError

AUC_BINS = 4096


@dataclass(frozen=True)
class ConcordanceCounts:
    """Harrell's C-index as two additive counts: pairs ordered right (ties in the score
    count half) and pairs that can be ordered at all."""

    concordant: float
    comparable: int

    def __add__(self, other: ConcordanceCounts) -> ConcordanceCounts:
        return ConcordanceCounts(
            self.concordant + other.concordant, self.comparable + other.comparable
        )

    @property
    def c_index(self) -> float:
        return self.concordant / self.comparable if self.comparable else float("nan")


def concordance_counts(
    risk: npt.ArrayLike, time: npt.ArrayLike, event: npt.ArrayLike, chunk: int = 1024
) -> ConcordanceCounts:
    """Harrell's concordance of risk scores (higher risk, earlier event) with survival times.

    The pairs of ``lifelines.utils.concordance_index``: (i, j) is comparable when i has an
    event at a time before j's time, or at the same time as j's censoring (j was still at
    risk); two events at the same time are not comparable. A comparable pair is concordant
    when i's risk is higher, and counts half when the risks are equal. Chunked over i so
    memory stays O(chunk * n).
    """
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    concordant = 0.0
    comparable = 0
    events = np.flatnonzero(e)
    for start in range(0, events.size, chunk):
        i = events[start : start + chunk]
        ti, ri = t[i][:, None], r[i][:, None]
        pairs = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        comparable += int(pairs.sum())
        concordant += float((pairs & (ri > r[None, :])).sum())
        concordant += 0.5 * float((pairs & (ri == r[None, :])).sum())
    return ConcordanceCounts(concordant, comparable)


@dataclass
class EvalStats:
    """Additive evaluation counts for one model on one or more test sets.

    ``score_hist[c, 0]`` counts scores of class-c probability for rows whose label is not
    c, ``score_hist[c, 1]`` for rows whose label is c. Binary tasks keep one row (c = 1).

    A survival model is scored by ``concordance`` instead (its confusion and histograms
    stay empty) and ``loss_sum`` is the Cox negative log partial likelihood of the site's
    test rows. Concordance counts add up over sites to a C-index over pairs of rows of the
    same site (what the sites' counts can give without sending risk scores); the mean of
    the per-site C-indices is FLamby's Fed-TCGA-BRCA metric.
    """

    num_classes: int
    count: int
    loss_sum: float
    confusion: npt.NDArray[np.int64]  # (C, C): true x predicted
    score_hist: npt.NDArray[np.int64]  # (C or 1, 2, AUC_BINS)
    concordance: ConcordanceCounts | None = None  # survival models only

    @classmethod
    def empty(cls, num_classes: int) -> EvalStats:
        rows = 1 if num_classes == 2 else num_classes
        return cls(
            num_classes=num_classes,
            count=0,
            loss_sum=0.0,
            confusion=np.zeros((num_classes, num_classes), dtype=np.int64),
            score_hist=np.zeros((rows, 2, AUC_BINS), dtype=np.int64),
        )

    @classmethod
    def from_predictions(
        cls,
        probs: npt.NDArray[np.floating],
        labels: npt.NDArray[np.integer],
        losses: npt.NDArray[np.floating],
        num_classes: int,
    ) -> EvalStats:
        """Build the counts from one site's predictions (this stays at the site)."""
        stats = cls.empty(num_classes)
        labels = np.asarray(labels, dtype=np.int64)
        stats.count = int(labels.shape[0])
        stats.loss_sum = float(np.asarray(losses, dtype=np.float64).sum())
        if stats.count == 0:
            return stats
        if num_classes == 2:
            p1 = np.asarray(probs, dtype=np.float64).reshape(-1)
            predicted = (p1 >= 0.5).astype(np.int64)
            score_columns = p1[:, None]
            positives = (labels == 1)[:, None]
        else:
            p = np.asarray(probs, dtype=np.float64)
            predicted = p.argmax(axis=1)
            score_columns = p
            positives = labels[:, None] == np.arange(num_classes)[None, :]
        np.add.at(stats.confusion, (labels, predicted), 1)
        bins = np.clip((score_columns * AUC_BINS).astype(np.int64), 0, AUC_BINS - 1)
        for c in range(score_columns.shape[1]):
            stats.score_hist[c, 1] += np.bincount(bins[positives[:, c], c], minlength=AUC_BINS)
            stats.score_hist[c, 0] += np.bincount(bins[~positives[:, c], c], minlength=AUC_BINS)
        return stats

    @classmethod
    def from_survival(
        cls,
        risk: npt.NDArray[np.floating],
        time: npt.NDArray[np.floating],
        event: npt.NDArray[np.integer] | npt.NDArray[np.floating],
        loss_sum: float,
        num_classes: int,
    ) -> EvalStats:
        """A survival model's counts on one site's test rows (this stays at the site)."""
        stats = cls.empty(num_classes)
        stats.count = int(np.asarray(time).shape[0])
        stats.loss_sum = float(loss_sum)
        stats.concordance = concordance_counts(risk, time, event)
        return stats

    @property
    def is_survival(self) -> bool:
        return self.concordance is not None

    def __add__(self, other: EvalStats) -> EvalStats:
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot add stats of {self.num_classes} and {other.num_classes} classes"
            )
        if self.is_survival != other.is_survival:
            raise ValueError("cannot add the stats of a survival and of a classification model")
        if self.concordance is not None and other.concordance is not None:
            return replace(
                self,
                count=self.count + other.count,
                loss_sum=self.loss_sum + other.loss_sum,
                concordance=self.concordance + other.concordance,
            )
        return EvalStats(
            num_classes=self.num_classes,
            count=self.count + other.count,
            loss_sum=self.loss_sum + other.loss_sum,
            confusion=self.confusion + other.confusion,
            score_hist=self.score_hist + other.score_hist,
        )

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.count) if self.count else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in the labels."""
        support = self.confusion.sum(axis=1)
        present = support > 0
        if not present.any():
            return float("nan")
        recall = np.diag(self.confusion)[present] / support[present]
        return float(recall.mean())

    @property
    def auc(self) -> float:
        """ROC AUC (binary) or macro one-vs-rest AUC; NaN without both classes."""
        values = [histogram_auc(h[1], h[0]) for h in self.score_hist]
        finite = [v for v in values if not np.isnan(v)]
        return float(np.mean(finite)) if finite else float("nan")

    @property
    def c_index(self) -> float:
        """Harrell's C-index of a survival model; NaN without a comparable pair."""
        return self.concordance.c_index if self.concordance is not None else float("nan")

    def summary(self) -> dict[str, float]:
        if self.is_survival:
            return {"c_index": self.c_index, "loss": self.loss, "count": float(self.count)}
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "auc": self.auc,
            "loss": self.loss,
            "count": float(self.count),
        }


def histogram_auc(pos_hist: npt.NDArray[np.int64], neg_hist: npt.NDArray[np.int64]) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), ties meaning 'same bin'."""
    n_pos = int(pos_hist.sum())
    n_neg = int(neg_hist.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg_hist) - neg_hist  # negatives in strictly lower bins
    wins = float((pos_hist * neg_below).sum()) + 0.5 * float((pos_hist * neg_hist).sum())
    return wins / (n_pos * n_neg)


def exact_auc(scores: npt.NDArray[np.floating], labels: npt.NDArray[np.integer]) -> float:
    """Rank-based (Mann-Whitney) AUC of one site's scores, ties counted half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    pos = labels == 1
    n_pos = int(pos.sum())
    n_neg = int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def eval_counts(stats: EvalStats) -> dict[str, Any]:
    """The additive counts behind an evaluation, as JSON (the score histogram kept sparse)."""
    hist = stats.score_hist.reshape(-1)
    nonzero = np.flatnonzero(hist)
    counts: dict[str, Any] = {
        "num_classes": stats.num_classes,
        "count": stats.count,
        "loss_sum": stats.loss_sum,
        "confusion": stats.confusion.tolist(),
        "score_hist": {
            "shape": list(stats.score_hist.shape),
            "index": nonzero.tolist(),
            "value": hist[nonzero].tolist(),
        },
    }
    if stats.concordance is not None:
        counts["concordance"] = {
            "concordant": stats.concordance.concordant,
            "comparable": stats.concordance.comparable,
        }
    return counts


def eval_from_counts(raw: Mapping[str, Any], where: str = "result.json") -> EvalStats:
    """Inverse of :func:`eval_counts`; a malformed entry is a ConfigError naming ``where``."""
    try:
        num_classes = int(raw["num_classes"])
        stats = EvalStats.empty(num_classes)
        stats.count = int(raw["count"])
        stats.loss_sum = float(raw["loss_sum"])
        stats.confusion = np.asarray(raw["confusion"], dtype=np.int64).reshape(
            num_classes, num_classes
        )
        hist = raw["score_hist"]
        if tuple(hist["shape"]) != stats.score_hist.shape:
            raise ValueError(f"score_hist shape {hist['shape']}, expected {stats.score_hist.shape}")
        flat = stats.score_hist.reshape(-1)
        flat[np.asarray(hist["index"], dtype=np.int64)] = np.asarray(hist["value"], np.int64)
        if "concordance" in raw:
            pairs = raw["concordance"]
            stats.concordance = ConcordanceCounts(
                float(pairs["concordant"]), int(pairs["comparable"])
            )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{where}: evaluation counts are malformed: {exc}") from exc
    return stats
