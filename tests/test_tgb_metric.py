"""TGB's metric: parity with TGB's own Evaluator (py-tgb), ragged negatives, ties, NaN."""

import numpy as np
import pytest
import torch

from disttgl.tgb.metric import TGBRanking, tgb_ranks
from disttgl.train.metrics import NonFiniteScores


def _rows(rng, rows, q, levels):
    """Scores drawn from ``levels`` distinct values, so ties are frequent."""
    pos = torch.from_numpy(rng.integers(0, levels, rows).astype(np.float32))
    neg = torch.from_numpy(rng.integers(0, levels, (rows, q)).astype(np.float32))
    return pos, neg


@pytest.mark.parametrize("levels", [3, 20, 10_000])
def test_equals_tgb_evaluator_on_random_scores_with_ties(levels):
    evaluate = pytest.importorskip("tgb.linkproppred.evaluate", reason="py-tgb (TGB's Evaluator) not installed")
    rng = np.random.default_rng(levels)
    pos, neg = _rows(rng, 500, 37, levels)
    ev = evaluate.Evaluator(name="tgbl-wiki")
    want = ev.eval({"y_pred_pos": pos.numpy(), "y_pred_neg": neg.numpy(), "eval_metric": ["mrr"]})
    acc = TGBRanking()
    for s in range(0, 500, 128):  # batch by batch, as the evaluation streams
        p, n = pos[s:s + 128], neg[s:s + 128]
        acc.update(p, n.reshape(-1), torch.arange(len(p) + 1) * 37)
    got = acc.compute()
    assert got["tgb_mrr"] == pytest.approx(float(want["mrr"]), rel=1e-6)
    assert got["tgb_hits@10"] == pytest.approx(float(want["hits@10"]), rel=1e-6)


def test_ragged_rows_rank_each_positive_among_its_own_negatives():
    evaluate = pytest.importorskip("tgb.linkproppred.evaluate", reason="py-tgb (TGB's Evaluator) not installed")
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 30, 200)
    ptr = torch.from_numpy(np.r_[0, np.cumsum(counts)])
    pos = torch.from_numpy(rng.integers(0, 8, 200).astype(np.float32))
    neg = torch.from_numpy(rng.integers(0, 8, int(counts.sum())).astype(np.float32))
    ranks = tgb_ranks(pos, neg, ptr)
    ev = evaluate.Evaluator(name="tgbl-wiki")
    # TGB's example scores one positive at a time (its rows may differ in length): the mean of those
    per_row = [float(ev.eval({"y_pred_pos": pos[r:r + 1].numpy(),
                              "y_pred_neg": neg[ptr[r]:ptr[r + 1]].numpy().reshape(1, -1),
                              "eval_metric": ["mrr"]})["mrr"]) for r in range(200)]
    np.testing.assert_allclose((1.0 / ranks).numpy(), per_row, rtol=1e-6)
    assert float(ranks[counts == 0].max()) == 1.0  # no negatives: rank 1


def test_hand_worked_ranks():
    # positive 2.0 against [3, 2, 2, 1]: 1 above, 3 at least as high -> rank 0.5 * (1 + 3) + 1 = 3
    ranks = tgb_ranks(torch.tensor([2.0, 5.0]), torch.tensor([3.0, 2.0, 2.0, 1.0, 5.0]), torch.tensor([0, 4, 5]))
    assert ranks.tolist() == [3.0, 1.5]
    acc = TGBRanking()
    acc.update(torch.tensor([2.0, 5.0]), torch.tensor([3.0, 2.0, 2.0, 1.0, 5.0]), torch.tensor([0, 4, 5]))
    assert acc.compute() == {"tgb_mrr": pytest.approx((1 / 3 + 1 / 1.5) / 2), "tgb_hits@10": 1.0}


def test_non_finite_scores_and_bad_offsets_are_errors():
    with pytest.raises(NonFiniteScores):
        tgb_ranks(torch.tensor([float("nan")]), torch.tensor([0.0]), torch.tensor([0, 1]))
    with pytest.raises(NonFiniteScores):
        tgb_ranks(torch.tensor([0.0]), torch.tensor([float("inf")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="CSR"):
        tgb_ranks(torch.tensor([0.0]), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        TGBRanking().compute()
