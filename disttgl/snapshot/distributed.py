"""The snapshot DGNN step over P ranks (docs/design.md §11.6).

1. **Graph convolution by snapshot.** Rank r streams its block of snapshots T_r = [a, b) plus the
   ``halo`` snapshots before it that the encoder mixes (TM-GCN: w − 1, clipped at 0; GCN + LSTM:
   none) from the snapshots file it reads like every rank, and computes H[T_r, all N]. The history
   is input, not activations: a rank recomputes Â (and X) of those w − 1 snapshots itself, so the
   mixing Ĉ_t = Σ_k M[t, k] Â_k is exact and nothing is exchanged for it.
2. **One all-to-all** (:class:`~disttgl.snapshot.comm.Exchange`): H[T_r, V_q] goes to rank q, which
   then holds H[all T, V_q]; the gradients go back by the reverse all-to-all in backward.
3. **Temporal step by vertex**: the LSTM (or M^-1) along all T for the vertices of V_q.
4. **Scoring**: target t reads Z[t − 1] of its pairs' endpoints. The target is scored by the rank
   whose snapshot block holds t − 1; every rank knows every target and negative (same seeds), so
   each sends it exactly the rows of Z[t − 1] it owns among the target's endpoints
   (:class:`ScorePlan`), one more all-to-all (and its reverse), at most one row per node and target.
5. Each rank's loss is its share of the single-process loss (sums over its pairs divided by the
   global counts), so the sum over ranks of the parameters' gradients is the single-process
   gradient: :meth:`~disttgl.snapshot.comm.Comm.reduce_gradients` sums them (weights stay replicated).

Evaluation runs steps 1–4 without gradients; rank 0 gathers the scores (an all-to-all in which
only rank 0 receives), computes the metrics from arrays laid out as the single process's, and
shares the few numbers (an all-reduce with zeros on the other ranks: exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from disttgl.snapshot.comm import Comm, exchange
from disttgl.snapshot.models import SnapshotLinkModel
from disttgl.snapshot.partition import Partition
from disttgl.snapshot.streamer import SnapshotStreamer
from disttgl.snapshot.task import Targets
from disttgl.train.metrics import NonFiniteScores, RankingMetrics

METRICS = ("ap", "mrr", "ap_1neg")  # RankingMetrics.compute's keys


@dataclass(frozen=True)
class ScorePlan:
    """What one rank sends and receives to score its targets, and where their pairs sit.

    ``send_index``: rows of this rank's Z (flattened to [T · |V_r|, d]) for each destination rank in
    turn, ``send_rows[q]`` of them for rank q; ``recv_rows[q]`` rows come from rank q. ``table``
    reorders the received rows into one table per owned target (its endpoints in id order), and
    ``src``/``dst``/``neg`` index that table. ``mine`` are the owned targets' indices (contiguous)."""

    send_index: torch.Tensor
    send_rows: list[int]
    recv_rows: list[int]
    table: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    neg: torch.Tensor
    mine: range


def score_plan(targets: Targets, negatives: Sequence[torch.Tensor], part: Partition, rank: int) -> ScorePlan:
    """The :class:`ScorePlan` of rank ``rank`` for ``targets`` with ``negatives``, Z over ``part``.

    Args:
        targets: every target (the same on all ranks).
        negatives: their negatives [positives, Q] (the same on all ranks).
        part: the blocks; target t is owned by the rank of snapshot t − 1.
        rank: this rank.
    """
    p = part.size
    dev = targets.src[0].device if targets.src else torch.device("cpu")
    bounds = torch.tensor(part.vertices, device=dev)
    owner = [part.snapshot_owner(t - 1) for t in targets.snapshots]
    ids = [torch.unique(torch.cat([s, d, q.reshape(-1)])) for s, d, q in zip(targets.src, targets.dst, negatives)]
    cuts = [torch.searchsorted(i, bounds).tolist() for i in ids]  # ids[i][cuts[i][q]:cuts[i][q+1]] in V_q
    v0, v1 = part.vertex_block(rank)
    send, send_rows = [], [0] * p
    for i, (t, o) in enumerate(zip(targets.snapshots, owner)):
        rows = ids[i][cuts[i][rank]:cuts[i][rank + 1]]
        send.append((t - 1) * (v1 - v0) + rows - v0)
        send_rows[o] += len(rows)
    by_owner = sorted(range(len(owner)), key=lambda i: owner[i])  # stable: rank q's rows in target order
    send_index = torch.cat([send[i] for i in by_owner]) if send else torch.zeros(0, dtype=torch.long, device=dev)
    mine = [i for i, o in enumerate(owner) if o == rank]
    recv_rows, start, pieces = [0] * p, 0, {}
    for q in range(p):  # received: from rank 0 first, each rank's rows in target order
        for i in mine:
            k = cuts[i][q + 1] - cuts[i][q]
            pieces[q, i] = (start, k)
            start += k
            recv_rows[q] += k
    order, base, src, dst, neg = [], 0, [], [], []
    for i in mine:  # a target's rows from ranks 0 .. P - 1 are its ids in order: contiguous vertex blocks
        order += [torch.arange(a, a + k, device=dev) for a, k in (pieces[q, i] for q in range(p))]
        src.append(base + torch.searchsorted(ids[i], targets.src[i]))
        dst.append(base + torch.searchsorted(ids[i], targets.dst[i]))
        neg.append(base + torch.searchsorted(ids[i], negatives[i].contiguous()))
        base += len(ids[i])
    q_neg = negatives[0].shape[1] if negatives else 0
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    cat = lambda xs, *shape: torch.cat(xs) if xs else empty.reshape(*shape)  # noqa: E731
    return ScorePlan(send_index, send_rows, recv_rows, cat(order, 0), cat(src, 0), cat(dst, 0),
                     cat(neg, 0, q_neg), range(mine[0], mine[-1] + 1) if mine else range(0))


class DistributedStep:
    """Forward, loss and evaluation of a :class:`SnapshotLinkModel` over the ranks of ``comm``.

    Args:
        model: the model, replicated (same initial weights) on every rank.
        streamer: this rank's snapshot streamer (it streams only its block and halo).
        comm: the process group and the byte counter.
    """

    def __init__(self, model: SnapshotLinkModel, streamer: SnapshotStreamer, comm: Comm):
        self.model, self.streamer, self.comm = model, streamer, comm

    def partition(self, num_snapshots: int) -> Partition:
        n, p = self.model.features.num_nodes, self.comm.size
        if num_snapshots < p or n < p:
            raise ValueError(f"{p} ranks need at least {p} snapshots and nodes, got {num_snapshots} and {n}")
        return Partition.even(num_snapshots, n, p)

    def embed(self, num_snapshots: int, phase: str = "") -> tuple[torch.Tensor, Partition]:
        """This rank's Z [T, |V_r|, d] for snapshots 0 .. ``num_snapshots`` − 1, and the blocks."""
        part, r = self.partition(num_snapshots), self.comm.rank
        enc = self.model.encoder
        a, b = part.snapshot_block(r)
        lo = max(0, a - enc.halo)
        adjs, xs = self.model.inputs(list(self.streamer.stream(lo, b)))
        h = enc.snapshot_stage(adjs, xs, first=a - lo, offset=lo)  # [|T_r|, N, d]
        d, ts, vs = h.shape[-1], part.snapshot_sizes(), part.vertex_sizes()
        send = torch.cat([h[:, v0:v1].reshape(-1) for v0, v1 in zip(part.vertices, part.vertices[1:])])
        recv = exchange(send, [ts[r] * v * d for v in vs], [t * vs[r] * d for t in ts], self.comm, phase + "stage")
        pieces = torch.split(recv, [t * vs[r] * d for t in ts])
        hv = torch.cat([x.reshape(t, vs[r], d) for x, t in zip(pieces, ts)])  # [T, |V_r|, d]
        return enc.temporal_stage(hv), part

    def scores(self, z: torch.Tensor, part: Partition, targets: Targets, negatives: Sequence[torch.Tensor],
               phase: str = "") -> tuple[torch.Tensor, torch.Tensor, ScorePlan]:
        """(positive [P_r], negative [P_r, Q]) logits of this rank's targets, and the plan."""
        plan = score_plan(targets, negatives, part, self.comm.rank)
        d = z.shape[-1]
        send = z.reshape(-1, d)[plan.send_index].reshape(-1)
        recv = exchange(send, [k * d for k in plan.send_rows], [k * d for k in plan.recv_rows], self.comm,
                        phase + "score").reshape(-1, d)
        table = recv[plan.table]
        zu = table[plan.src]  # as SnapshotLinkModel.score, which cannot reshape an empty block
        pos, neg = self.model.predictor(zu, table[plan.dst]), self.model.predictor(zu.unsqueeze(1), table[plan.neg])
        if not len(table) and recv.requires_grad:  # keep the exchange in this rank's graph: its backward is collective
            pos = pos + 0 * recv.sum()
        return pos, neg, plan

    def train_loss(self, targets: Targets, negatives: Sequence[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """This rank's share of the loss (to backward) and the whole loss (summed over ranks).

        The single-process loss is mean BCE(positives) + mean BCE(negatives); each rank contributes
        its pairs' sums divided by the global counts."""
        z, part = self.embed(targets.last)
        pos, neg, _ = self.scores(z, part, targets, negatives)
        n_neg = sum(x.numel() for x in negatives)
        loss = (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum") / targets.positives
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum") / n_neg)
        return loss, self.sum_scalars([loss.item()])[0]

    def reduce_gradients(self) -> None:
        self.comm.reduce_gradients([p for p in self.model.parameters() if p.requires_grad])

    def sum_scalars(self, values: Sequence[float], name: str = "scalars") -> list[float]:
        """Each value summed over the ranks (float64, on the model's device)."""
        x = torch.tensor(list(values), dtype=torch.float64, device=self.streamer.device)
        return self.comm.all_reduce(x, name).tolist()

    @torch.no_grad()
    def evaluate(self, num_snapshots: int, splits: Sequence[tuple[Targets, Sequence[torch.Tensor]]]
                 ) -> list[dict[str, float]]:
        """MRR, AP and AP (1 negative) of each (targets, negatives), from one forward pass over
        snapshots 0 .. ``num_snapshots`` − 1. Rank 0 gathers the scores (in the single process's
        order: owners follow the targets' order) and computes the metrics; every rank gets them."""
        z, part = self.embed(num_snapshots, "eval_")
        p, rank = self.comm.size, self.comm.rank
        values = torch.zeros(len(splits), len(METRICS), dtype=torch.float64, device=z.device)
        for j, (targets, negatives) in enumerate(splits):
            pos, neg, _ = self.scores(z, part, targets, negatives, "eval_")
            q = negatives[0].shape[1] if negatives else 0
            owner = [part.snapshot_owner(t - 1) for t in targets.snapshots]
            counts = [sum(len(s) for s, o in zip(targets.src, owner) if o == r) for r in range(p)]
            send = [pos.numel() + neg.numel() if r == 0 else 0 for r in range(p)]
            recv = [c * (1 + q) for c in counts] if rank == 0 else [0] * p
            got = self.comm.all_to_all(torch.cat([pos, neg.reshape(-1)]), send, recv, "eval_scores")
            if rank == 0:
                pieces = torch.split(got, recv)
                metrics = RankingMetrics()
                metrics.update(torch.cat([x[:c] for x, c in zip(pieces, counts)]),
                               torch.cat([x[c:].reshape(c, q) for x, c in zip(pieces, counts)]))
                try:
                    result = metrics.compute()
                    values[j] = torch.tensor([result[k] for k in METRICS], dtype=torch.float64)
                except NonFiniteScores:  # every rank must learn it, or the others wait in the next collective
                    values[j] = float("nan")
        self.comm.all_reduce(values, "eval_metrics")  # zeros elsewhere: rank 0's numbers, exactly
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteScores("non-finite evaluation scores on rank 0: no metric is computed from them")
        return [dict(zip(METRICS, row)) for row in values.tolist()]
