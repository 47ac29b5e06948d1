"""Link-prediction metrics over a split: AP and MRR with Q negatives per positive, TGN-style AP.

Names as in the run outputs: ``mrr`` = mean reciprocal rank of the positive among its 1 + Q
candidates with ties counted in the positive's favour (DistTGL); ``ap`` = average precision over all
1 + Q candidates of the split pooled; ``ap_1neg`` = the same with only the first negative of each
positive (TGN/TGL report AP with one negative).
"""

from __future__ import annotations

import numpy as np
import torch


def reciprocal_ranks(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """[B] 1 / rank of each positive; only negatives scoring strictly higher push it down."""
    rank = 1 + (neg > pos.unsqueeze(1)).sum(1)
    return 1.0 / rank.double()


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision as sklearn defines it: sum_n (R_n - R_{n-1}) P_n, tied scores one threshold."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
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
    p, n = pos.double().numpy(), neg.double().numpy()
    ones, zeros = np.ones(len(p)), np.zeros(n.size)
    return {
        "ap": average_precision(np.r_[p, n.ravel()], np.r_[ones, zeros]),
        "mrr": float(reciprocal_ranks(pos, neg).mean()),
        "ap_1neg": average_precision(np.r_[p, n[:, 0]], np.r_[ones, np.zeros(len(p))]),
    }
