"""TGB's link-prediction metric: ``tgb_mrr`` and ``tgb_hits@10``.

TGB's ``Evaluator`` ranks each positive among its own negatives with ties averaged:
rank = 0.5 · (#negatives scoring above it + #negatives scoring at least as high) + 1, and reports
the mean of 1 / rank (MRR) and the share of ranks <= 10 (hits@10). That is a different number from
disttgl's ``mrr`` (ties in the positive's favour, 49 random negatives), so it carries its own name
everywhere. Negatives are ragged here (TGB's ``hist_rnd`` gives some positives fewer than q): a
positive's scores are a CSR row, ``neg[ptr[r]:ptr[r + 1]]``, the layout of
:class:`disttgl.tgb.negatives_file.SplitNegatives`.

Non-finite scores never become a metric: :class:`~disttgl.train.metrics.NonFiniteScores` is raised.
"""

from __future__ import annotations

import numpy as np
import torch

from disttgl.train.metrics import NonFiniteScores

HITS_K = 10


def tgb_ranks(pos: torch.Tensor, neg: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """float64 [P] TGB rank of each positive: ``pos`` [P] scores, ``neg`` [ptr[-1]] the scores of
    positive r's negatives at ``neg[ptr[r]:ptr[r + 1]]``."""
    pos, neg = pos.detach().double().reshape(-1), neg.detach().double().reshape(-1)
    ptr = ptr.to(torch.long).reshape(-1)
    if len(ptr) != len(pos) + 1 or int(ptr[0]) != 0 or int(ptr[-1]) != len(neg):
        raise ValueError(f"ptr must be CSR offsets of {len(pos)} rows over {len(neg)} scores")
    bad_pos, bad_neg = int((~torch.isfinite(pos)).sum()), int((~torch.isfinite(neg)).sum())
    if bad_pos or bad_neg:
        raise NonFiniteScores(f"non-finite scores ({bad_pos} positive, {bad_neg} negative): no metric is "
                              "computed from them")
    counts = ptr[1:] - ptr[:-1]
    owner = torch.repeat_interleave(torch.arange(len(pos)), counts)
    p = pos[owner]
    above = torch.zeros(len(pos), dtype=torch.float64).index_add_(0, owner, (neg > p).double())
    at_least = torch.zeros(len(pos), dtype=torch.float64).index_add_(0, owner, (neg >= p).double())
    return 0.5 * (above + at_least) + 1.0


class TGBRanking:
    """Accumulates TGB ranks batch by batch; ``compute()`` gives ``tgb_mrr`` and ``tgb_hits@10``."""

    def __init__(self) -> None:
        self._ranks: list[torch.Tensor] = []

    def update(self, pos: torch.Tensor, neg: torch.Tensor, ptr: torch.Tensor) -> None:
        self._ranks.append(tgb_ranks(pos.cpu(), neg.cpu(), ptr.cpu()))

    @property
    def count(self) -> int:
        return sum(len(r) for r in self._ranks)

    def compute(self) -> dict[str, float]:
        if not self._ranks:
            raise ValueError("no positive was scored: TGB MRR of an empty split")
        ranks = torch.cat(self._ranks).numpy()
        return {"tgb_mrr": float(np.mean(1.0 / ranks)), f"tgb_hits@{HITS_K}": float(np.mean(ranks <= HITS_K))}
