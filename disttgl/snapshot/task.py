"""Link prediction on snapshots (docs/design.md §11.5): the links of snapshot t + 1 are predicted
from the embeddings after snapshot t. A target snapshot's positives are the distinct directed pairs
(u, v) of its own events (not the edge-life window); negatives replace v with a uniformly drawn
node (from the destination side on bipartite graphs). Training draws one negative per positive,
afresh every epoch; evaluation fixes ``eval_negatives`` per positive once, and scores with
disttgl's :class:`~disttgl.train.metrics.RankingMetrics` (MRR, AP, AP with one negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from disttgl.snapshot.adjacency import DeviceAdjacency
from disttgl.snapshot.build import Snapshots
from disttgl.snapshot.models import SnapshotLinkModel
from disttgl.train.metrics import RankingMetrics


@dataclass(frozen=True)
class Targets:
    """Target snapshots t (>= 1) of one split with their positive pairs (on the device)."""

    snapshots: list[int]
    src: list[torch.Tensor]
    dst: list[torch.Tensor]
    events: int  # events in those snapshots, repeats of a pair included

    @property
    def last(self) -> int:
        return max(self.snapshots, default=0)

    @property
    def positives(self) -> int:
        return sum(len(s) for s in self.src)


def split_targets(snaps: Snapshots, split: int, device: torch.device | str = "cpu") -> Targets:
    """The non-empty snapshots t >= 1 labelled ``split`` (0 train, 1 val, 2 test) as targets.

    Args:
        snaps: the snapshots.
        split: which split's snapshots.
        device: where the pairs go.
    """
    chosen, src, dst, events = [], [], [], 0
    for t in np.flatnonzero(snaps.split == split).tolist():
        row, col, count = snaps.events.part(t)
        if t == 0 or len(row) == 0:
            continue
        chosen.append(t)
        src.append(torch.from_numpy(row.astype(np.int64)).to(device))
        dst.append(torch.from_numpy(col.astype(np.int64)).to(device))
        events += int(count.sum())
    return Targets(chosen, src, dst, events)


def candidate_pool(snaps: Snapshots, bipartite: bool) -> np.ndarray | None:
    """Nodes negatives are drawn from: every event's destination on a bipartite graph, else all (None)."""
    return np.unique(snaps.events.col).astype(np.int64) if bipartite else None


def draw_negatives(rng: np.random.Generator, targets: Targets, per_positive: int, num_nodes: int,
                   pool: np.ndarray | None, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """[positives, per_positive] uniform negative destinations for each target snapshot."""
    out = []
    for src in targets.src:
        shape = (len(src), per_positive)
        ids = rng.integers(0, num_nodes, shape) if pool is None else pool[rng.integers(0, len(pool), shape)]
        out.append(torch.from_numpy(ids.astype(np.int64)).to(device))
    return out


def _scores(model: SnapshotLinkModel, z: torch.Tensor, targets: Targets,
            negatives: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive [P], negative [P, Q]) logits of every target; target t reads z[t - 1]."""
    pos, neg = [], []
    for t, src, dst, nd in zip(targets.snapshots, targets.src, targets.dst, negatives):
        pos.append(model.score(z[t - 1], src, dst))
        neg.append(model.score(z[t - 1], src, nd))
    return torch.cat(pos), torch.cat(neg)


def link_loss(model: SnapshotLinkModel, z: torch.Tensor, targets: Targets,
              negatives: Sequence[torch.Tensor]) -> torch.Tensor:
    """BCE of positives against 1 plus BCE of negatives against 0, each a mean."""
    pos, neg = _scores(model, z, targets, negatives)
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))


def train_step(model: SnapshotLinkModel, raws: Sequence[DeviceAdjacency], targets: Targets,
               negatives: Sequence[torch.Tensor]) -> torch.Tensor:
    """Forward over snapshots ``raws`` (0 .. targets.last - 1) and the loss; the caller steps."""
    return link_loss(model, model.embed(raws), targets, negatives)


@torch.no_grad()
def evaluate(model: SnapshotLinkModel, z: torch.Tensor, targets: Targets,
             negatives: Sequence[torch.Tensor]) -> dict[str, float]:
    """MRR, AP and AP (1 negative) of the targets, from embeddings ``z`` covering t - 1 for each."""
    metrics = RankingMetrics()
    metrics.update(*_scores(model, z, targets, negatives))
    return metrics.compute()
