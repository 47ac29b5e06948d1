"""Metrics over a split: link prediction's AP and MRR with Q negatives per positive and TGN-style
AP; edge classification's F1-micro, F1-macro and accuracy (:func:`f1_scores`), and multi-label edge
classification's F1 over the indicator matrix (:func:`multilabel_f1_scores`, docs/design.md §13).

Names as in the run outputs: ``mrr`` = mean reciprocal rank of the positive among its 1 + Q
candidates with ties counted in the positive's favour (DistTGL); ``ap`` = average precision over all
1 + Q candidates of the split pooled; ``ap_1neg`` = the same with only the first negative of each
positive (TGN/TGL report AP with one negative).

Non-finite scores (NaN, inf) are never turned into a metric: ``average_precision``,
``ranking_metrics`` and ``RankingMetrics.compute()`` raise :class:`NonFiniteScores`. Comparisons with
NaN are false, so without the check a NaN positive ties every negative (rank 1) and all-NaN scores
give AP = MRR = 1.0. ``reciprocal_ranks`` on its own counts a comparison involving NaN against the
positive (a NaN never wins).
"""

from __future__ import annotations

import numpy as np
import torch


class NonFiniteScores(ValueError):
    """Scores with NaN or inf: a metric computed from them would be meaningless (often a perfect 1.0)."""


def reciprocal_ranks(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """[B] 1 / rank of each positive; only negatives scoring strictly higher push it down.

    ``~(neg <= pos)`` rather than ``neg > pos``: a negative the positive is not provably at least
    as good as (either score NaN) pushes it down, so NaN scores rank a positive last, never first.
    """
    rank = 1 + (~(neg <= pos.unsqueeze(1))).sum(1)
    return 1.0 / rank.double()


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision as sklearn defines it: sum_n (R_n - R_{n-1}) P_n, tied scores one threshold."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    _check_finite(scores)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # last index of every run of equal scores = the thresholds
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class RankingMetrics:
    """Accumulates (pos [B], neg [B, Q]) scores batch by batch; ``compute()`` gives the split's metrics."""

    def __init__(self) -> None:
        self._pos: list[torch.Tensor] = []
        self._neg: list[torch.Tensor] = []

    def update(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        self._pos.append(pos.detach().float().cpu())
        self._neg.append(neg.detach().float().cpu())

    def compute(self) -> dict[str, float]:
        if not self._pos:
            return {"ap": float("nan"), "mrr": float("nan"), "ap_1neg": float("nan")}
        pos = torch.cat(self._pos)
        neg = torch.cat(self._neg)
        return ranking_metrics(pos, neg)


def ranking_metrics(pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    """AP, MRR and AP(1 neg); raises :class:`NonFiniteScores` if any score is NaN or inf."""
    p, n = pos.double().numpy(), neg.double().numpy()
    _check_finite(p, n)
    ones, zeros = np.ones(len(p)), np.zeros(n.size)
    return {
        "ap": average_precision(np.r_[p, n.ravel()], np.r_[ones, zeros]),
        "mrr": float(reciprocal_ranks(pos, neg).mean()),
        "ap_1neg": average_precision(np.r_[p, n[:, 0]], np.r_[ones, np.zeros(len(p))]),
    }


def _check_finite(*scores: np.ndarray) -> None:
    bad = [int(np.size(s) - np.isfinite(s).sum()) for s in scores]
    if any(bad):
        what = ["positive", "negative"] if len(bad) == 2 else ["score"]
        raise NonFiniteScores("non-finite scores (" + ", ".join(f"{b} {w}" for b, w in zip(bad, what) if b)
                              + "): no metric is computed from them")


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """F1-micro, F1-macro and accuracy of single-label class predictions, as sklearn's
    ``f1_score(average=...)`` and ``accuracy_score`` define them (``zero_division=0``).

    Macro averages over the classes in ``y_true`` or ``y_pred`` (sklearn's default ``labels``): a
    class never predicted, or predicted but absent, has precision or recall 0/0 taken as 0, hence
    F1 0. With one label per event F1-micro equals accuracy. An empty split gives 0.0 (never NaN).
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        return {"f1_micro": 0.0, "f1_macro": 0.0, "accuracy": 0.0}
    classes, inv = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = inv[:len(y_true)], inv[len(y_true):]
    k = len(classes)
    tp = np.bincount(t[t == p], minlength=k).astype(np.float64)
    fp = np.bincount(p, minlength=k) - tp
    fn = np.bincount(t, minlength=k) - tp
    # F1 = 2 tp / (2 tp + fp + fn); every class here is in y_true or y_pred, so the denominator is > 0
    per_class = 2 * tp / (2 * tp + fp + fn)
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    return {"f1_micro": float(micro), "f1_macro": float(per_class.mean()), "accuracy": float(tp.sum() / len(t))}


class ClassMetrics:
    """Accumulates (logits [B, C], true class [B]) batch by batch; ``compute()`` gives
    :func:`f1_scores` of the argmax predictions (ties: the lowest class index, as ``torch.argmax``)."""

    def __init__(self) -> None:
        self._true: list[torch.Tensor] = []
        self._pred: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self._pred.append(logits.detach().argmax(1).cpu())
        self._true.append(target.detach().cpu())

    def compute(self) -> dict[str, float]:
        if not self._true:
            return f1_scores(np.zeros(0), np.zeros(0))
        return f1_scores(torch.cat(self._true).numpy(), torch.cat(self._pred).numpy())



def multilabel_f1_scores(y_true: np.ndarray, y_pred: np.ndarray, missed: np.ndarray | int = 0) -> dict[str, float]:
    """F1-micro, F1-macro and exact-match ratio of multi-label predictions, 0/1 indicator matrices
    [n, C], as sklearn's ``f1_score(average=...)`` (``zero_division=0``) and ``accuracy_score`` define
    them on indicator matrices.

    Micro = 2·TP / (2·TP + FP + FN) over all n·C entries; macro = the mean over the C columns of each
    column's F1, a column with 2·TP + FP + FN = 0 (no positive in ``y_true`` or ``y_pred``) scoring 0
    (sklearn's ``zero_division=0``). ``missed``: each event's positives in classes outside the C
    columns (the model has no output for them): false negatives in micro, and such an event is never
    an exact match; micro is then that of the wider matrix with those columns never predicted, and
    macro stays over the C columns. An empty split gives 0.0 (never NaN).

    Args:
        y_true: [n, C] true labels, 0/1 (any integer or bool dtype).
        y_pred: [n, C] predicted labels, 0/1.
        missed: [n] (or a scalar for every event) positives of each event in columns left out.
    """
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"labels {t.shape} and predictions {p.shape} must be matrices of one shape")
    missed = np.broadcast_to(np.asarray(missed, dtype=np.int64), (len(t),))
    exact = int(((t == p).all(1) & (missed == 0)).sum())
    return f1_from_counts((t & p).sum(0), (p & ~t).sum(0), (t & ~p).sum(0), int(missed.sum()), exact, len(t))


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, missed: int, exact: int, n: int
                   ) -> dict[str, float]:
    """:func:`multilabel_f1_scores` from per-column counts [C], the missed positives, exact matches and events."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    total = den.sum() + missed
    return {"f1_micro": float(2 * tp.sum() / total) if total > 0 else 0.0,
            "f1_macro": float(per_class.mean()) if per_class.size else 0.0,
            "exact_match": exact / n if n else 0.0}


class MultiLabelMetrics:
    """Accumulates (logits [B, C], true 0/1 [B, C], missed positives [B]) batch by batch as per-column
    counts on the logits' device (constant memory, one transfer at the end); ``compute()`` gives
    :func:`multilabel_f1_scores` of the decisions logit > 0 (DistTGL's threshold)."""

    def __init__(self) -> None:
        self._counts: torch.Tensor | None = None  # [3, C]: tp, fp, fn
        self._scalars: torch.Tensor | None = None  # [3]: missed, exact, events

    def update(self, logits: torch.Tensor, target: torch.Tensor, missed: torch.Tensor) -> None:
        p, t = logits.detach() > 0, target.detach().bool()
        counts = torch.stack([(t & p).sum(0), (p & ~t).sum(0), (t & ~p).sum(0)])
        exact = ((t == p).all(1) & (missed == 0)).sum()
        scalars = torch.stack([missed.sum().long(), exact, torch.tensor(len(t), device=exact.device)])
        self._counts = counts if self._counts is None else self._counts + counts
        self._scalars = scalars if self._scalars is None else self._scalars + scalars

    def compute(self) -> dict[str, float]:
        if self._counts is None or self._scalars is None:
            return {"f1_micro": 0.0, "f1_macro": 0.0, "exact_match": 0.0}
        (tp, fp, fn), (missed, exact, n) = self._counts.cpu().numpy(), self._scalars.cpu().tolist()
        return f1_from_counts(tp, fp, fn, int(missed), int(exact), int(n))
