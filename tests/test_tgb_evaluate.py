"""TGB's evaluation protocol: with the cache's batch size and negatives it is the cached evaluation
(same batches, same scores, same memory), chunking changes nothing, ragged rows are ranked alone."""

import numpy as np
import pytest
import torch

from disttgl.cache.format import BatchParams
from disttgl.cache.loader import BatchLoader
from disttgl.cache.reader import open_cache
from disttgl.data.synth import SynthConfig
from disttgl.models.memory import NodeMemory
from disttgl.models.tgn import TGN, ModelConfig
from disttgl.tgb.evaluate import evaluate_tgb, tgb_batches
from disttgl.tgb.metric import TGBRanking, tgb_ranks
from disttgl.tgb.negatives_file import SplitNegatives
from disttgl.train.epoch import load_features
from stores import synthetic_store

B, Q = 50, 9


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tgbeval")
    graph, cache = synthetic_store(d, SynthConfig(events=3000, nodes=80, edge_dim=4, seed=3),
                                   BatchParams(batch_size=B, neg_sets=2, eval_negatives=Q, seed=0), graph="g.h5", cache="c.h5")
    return str(graph), str(cache)


def _model(data):
    feats, graph = load_features(data[0], torch.device("cpu"))
    torch.manual_seed(0)
    model = TGN(ModelConfig(dim=16, time_dim=16, heads=2, dropout=0.0, edge_dim=graph.edge_dim,
                            num_nodes=graph.num_nodes))
    return model.eval(), feats, graph.num_nodes


def _cache_negatives(cache: str, split: str) -> SplitNegatives:
    with open_cache(cache) as c:
        neg = np.concatenate([c.batch(split, b).neg.numpy() for b in range(c.num_batches(split))])
    return SplitNegatives(np.arange(len(neg) + 1) * Q, neg.reshape(-1))


def _memory_after_train(model, feats, cache, n):
    memory = NodeMemory.zeros(n, 16)
    with open_cache(cache) as c:
        nb = c.num_batches("train")
    with torch.inference_mode():
        for batch in BatchLoader(cache, "train", [(b, 0) for b in range(nb)], prefetch=2):
            mem, mail = memory.gather(batch)
            _, _, new = model(batch, feats, mem, mail)
            memory.write(batch, new)
    return memory


@pytest.mark.parametrize("split", ["val", "test"])
def test_with_the_caches_negatives_it_is_the_cached_evaluation(data, split):
    graph, cache = data
    neg = _cache_negatives(cache, split)
    with open_cache(cache) as c:
        cached = [c.batch(split, b) for b in range(c.num_batches(split))]
    built = [chunks[0][0] for chunks in tgb_batches(graph, neg, split, batch_size=B, chunk=B)]
    assert len(built) == len(cached)
    for b, (x, y) in enumerate(zip(built, cached)):
        for name in x.__dataclass_fields__:
            assert torch.equal(getattr(x, name), getattr(y, name)), (b, name)


def test_scores_memory_and_metric_equal_the_cached_path_and_chunking_changes_nothing(data):
    graph, cache = data
    model, feats, n = _model(data)
    base = _memory_after_train(model, feats, cache, n)
    # the cached path: val batches in order, memory carried on; TGB's rank of every positive
    memory = NodeMemory(base.memory.clone(), base.mail.clone())
    acc = TGBRanking()
    with open_cache(cache) as c, torch.inference_mode():
        for b in range(c.num_batches("val")):
            batch = c.batch("val", b)
            mem, mail = memory.gather(batch)
            pos, negs, new = model(batch, feats, mem, mail)
            acc.update(pos, negs.reshape(-1), torch.arange(len(pos) + 1) * Q)
            memory.write(batch, new)
    want = acc.compute()
    neg = _cache_negatives(cache, "val")
    for chunk in (B, 7):
        m = NodeMemory(base.memory.clone(), base.mail.clone())
        got = evaluate_tgb(model, m, feats, graph, neg, "val", batch_size=B, chunk=chunk)
        assert got["tgb_mrr"] == pytest.approx(want["tgb_mrr"], abs=1e-12), chunk
        assert got["tgb_hits@10"] == want["tgb_hits@10"]
        torch.testing.assert_close(m.memory, memory.memory, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.mail, memory.mail, rtol=1e-5, atol=1e-6)


def test_ragged_rows_each_rank_among_their_own_negatives(data):
    graph, cache = data
    model, feats, n = _model(data)
    full = _cache_negatives(cache, "val")
    rng = np.random.default_rng(0)
    keep = rng.integers(0, Q + 1, full.rows)  # 0 .. Q negatives per positive
    rows = [full.row(r)[:k] for r, k in enumerate(keep)]
    ragged = SplitNegatives(np.r_[0, np.cumsum(keep)], np.concatenate(rows))
    # each positive scored against its own prefix: the same as masking the full rows' scores
    scores_pos, scores_neg = [], []
    with torch.inference_mode():
        for chunks in tgb_batches(graph, full, "val", batch_size=B, chunk=B):
            batch, _ = chunks[0]
            pos, negs, _ = model(batch, feats, *NodeMemory.zeros(n, 16).gather(batch))
            scores_pos.append(pos)
            scores_neg.append(negs)
    pos, negs = torch.cat(scores_pos), torch.cat(scores_neg)
    real = torch.arange(Q) < torch.from_numpy(keep).unsqueeze(1)
    want = tgb_ranks(pos, negs[real], torch.from_numpy(ragged.ptr))
    acc = TGBRanking()
    for chunks in tgb_batches(graph, ragged, "val", batch_size=B, chunk=11):
        for batch, counts in chunks:
            with torch.inference_mode():
                p, ng, _ = model(batch, feats, *NodeMemory.zeros(n, 16).gather(batch))
            mask = torch.arange(ng.shape[1]) < torch.from_numpy(counts).unsqueeze(1)
            acc.update(p, ng[mask], torch.from_numpy(np.r_[0, np.cumsum(counts)]))
    got = torch.cat(acc._ranks)
    torch.testing.assert_close(got, want)
    assert float(got[torch.from_numpy(keep == 0)].max()) == 1.0
