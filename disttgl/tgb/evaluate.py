"""TGB's evaluation protocol over a graph store (docs/design.md §9.3).

The split's positives are taken in time order in batches of ``batch_size`` (TGB: 200). Every
positive is scored against its own negatives (a row of :class:`SplitNegatives`) with the memory as
of the batch's start; then the batch's positives write memory, as in every disttgl pass. Batches
are built on the fly by the cache's own sampler (:class:`disttgl.cache.build.BatchSampler`) with the
given negatives, and the memory clock walks the stream as the cache's does, so with the cache's
batch size and negatives this path gives exactly the cached batches. A batch of 200 positives with
~1,000 negatives each is ~200k roots: it is scored ``chunk`` positives at a time (memory writes wait
for the whole batch, so chunking changes nothing but the peak memory).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from disttgl.cache.batch import Batch
from disttgl.cache.build import BatchSampler
from disttgl.cache.format import BatchParams
from disttgl.cache.memory_clock import plan
from disttgl.cache.reader import assemble
from disttgl.cache.sampling import prepare
from disttgl.data.graph import SPLIT_NAMES
from disttgl.data.graph_store import load_graph
from disttgl.models.memory import Memory
from disttgl.models.tgn import TGN, Features
from disttgl.tgb.metric import TGBRanking
from disttgl.tgb.negatives_file import SplitNegatives

TGB_BATCH_SIZE = 200  # TGB's examples (--bs)


def tgb_batches(graph_path: str, negatives: SplitNegatives, split: str, *, batch_size: int = TGB_BATCH_SIZE,
                chunk: int = 20, neighbors: int = 10, strategy: str = "recent", tgl_compat: bool = False,
                seed: int = 0) -> Iterator[list[tuple[Batch, np.ndarray]]]:
    """For every batch of the split, its chunks: (Batch with the chunk's negatives padded to the
    longest row, int64 [positives] how many of each row's negatives are real)."""
    graph = load_graph(graph_path, features=False)
    code = SPLIT_NAMES.index(split)
    split_eids = np.flatnonzero(graph.split == code)
    if negatives.rows != len(split_eids):
        raise ValueError(f"negatives for {negatives.rows} events, the {split} split has {len(split_eids)}")
    params = BatchParams(batch_size=batch_size, neighbors=neighbors, strategy=strategy, seed=seed,
                         tgl_compat=tgl_compat)
    sampler = BatchSampler(prepare(graph.tcsr, pad=max(neighbors, 1)), params, graph.num_nodes, graph.num_events,
                           None, np.dtype(np.int64))
    event_t = np.concatenate([graph.t, [0.0]]).astype(np.float64)
    counts_all = np.diff(negatives.ptr)
    for group, state in plan(graph.src, graph.dst, graph.t, graph.split, batch_size, 1, graph.num_nodes):
        pb = group[0]
        if pb.split != code:
            if pb.split > code:
                return
            continue  # earlier splits: only the memory clock walks them
        nb, mask = len(pb.eids), pb.write_mask
        rows = np.searchsorted(split_eids, pb.eids)
        chunks = []
        for c in range(0, nb, chunk):
            sl = slice(c, min(c + chunk, nb))
            r = rows[sl]
            counts = counts_all[r]
            q = max(int(counts.max(initial=0)), 1)
            neg = np.zeros((len(r), q), dtype=np.int64)
            for k, row in enumerate(r):  # pad a row with its first negative (masked out of the metric)
                ids = negatives.row(row)
                neg[k, :len(ids)] = ids
                neg[k, len(ids):] = ids[0] if len(ids) else 0
            ev = pb.eids[sl]
            parts = sampler.batch(code, pb.index, ev, graph.src[ev], graph.dst[ev], graph.t[ev],
                                  np.concatenate([mask[:nb][sl], mask[nb:][sl]]), state, 1, q, negatives=neg[None])
            fields = assemble(parts, event_t)
            chunks.append((Batch(**{k: torch.from_numpy(v) for k, v in fields.items()}), counts))
        yield chunks


@torch.inference_mode()
def evaluate_tgb(model: TGN, memory: Memory | None, feats: Features, graph_path: str, negatives: SplitNegatives,
                 split: str, *, batch_size: int = TGB_BATCH_SIZE, chunk: int = 20, neighbors: int = 10,
                 strategy: str = "recent", seed: int = 0) -> dict[str, float]:
    """``tgb_mrr`` and ``tgb_hits@10`` of ``split`` under TGB's protocol; ``memory`` is carried on
    (written by every batch's positives after the batch is scored)."""
    model.eval()
    device = feats.edge_feat.device
    acc = TGBRanking()
    for chunks in tgb_batches(graph_path, negatives, split, batch_size=batch_size, chunk=chunk,
                              neighbors=neighbors, strategy=strategy, seed=seed):
        writes = []
        for batch, counts in chunks:
            batch = batch.to(device)
            mem, mail = memory.gather(batch) if memory is not None else (None, None)
            pos, neg, new_mem = model(batch, feats, mem, mail)
            counts_t = torch.from_numpy(counts)
            real = torch.arange(neg.shape[1]) < counts_t.unsqueeze(1)
            ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts_t, 0)])
            acc.update(pos, neg.cpu()[real], ptr)
            writes.append((batch, new_mem))
        if memory is not None:  # the memory as of the batch's start served every chunk
            for batch, new_mem in writes:
                memory.write(batch, new_mem)
    return acc.compute()
