"""Ranking metrics against sklearn and brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from disttgl.train.metrics import NonFiniteScores, RankingMetrics, average_precision, ranking_metrics, reciprocal_ranks


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=500), 1)  # many ties
    labels = rng.random(500) < 0.3
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_average_precision_all_tied_is_base_rate():
    labels = np.array([1, 0, 0, 0])
    assert average_precision(np.zeros(4), labels) == pytest.approx(0.25)


def test_mrr_brute_force_ties_favour_positive():
    rng = np.random.default_rng(0)
    pos = torch.from_numpy(rng.integers(0, 5, 200).astype(np.float32))
    neg = torch.from_numpy(rng.integers(0, 5, (200, 49)).astype(np.float32))
    expected = []
    for p, ns in zip(pos.tolist(), neg.tolist()):
        rank = 1 + sum(1 for n in ns if n > p)  # equal scores do not push the positive down
        expected.append(1 / rank)
    assert reciprocal_ranks(pos, neg).numpy() == pytest.approx(np.array(expected))
    # all tied: the positive ranks first
    assert float(reciprocal_ranks(torch.zeros(3), torch.zeros(3, 49)).mean()) == 1.0


def test_ranking_metrics_pool_batches_and_use_first_negative_for_ap_1neg():
    rng = np.random.default_rng(1)
    pos = torch.from_numpy(rng.normal(1, 1, 300).astype(np.float32))
    neg = torch.from_numpy(rng.normal(0, 1, (300, 49)).astype(np.float32))
    acc = RankingMetrics()
    for sl in (slice(0, 100), slice(100, 300)):
        acc.update(pos[sl], neg[sl])
    got = acc.compute()
    assert got == ranking_metrics(pos, neg)
    y = np.r_[np.ones(300), np.zeros(300 * 49)]
    assert got["ap"] == pytest.approx(average_precision_score(y, np.r_[pos.numpy(), neg.numpy().ravel()]))
    assert got["ap_1neg"] == pytest.approx(
        average_precision_score(np.r_[np.ones(300), np.zeros(300)], np.r_[pos.numpy(), neg[:, 0].numpy()]))
    assert 0.09 < got["mrr"] < 1  # better than random (~0.09 with 49 negatives)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["pos", "neg", "all"])
def test_non_finite_scores_never_become_a_metric(bad, where):
    # one NaN static row made every score NaN, and the metrics came out as AP = MRR = 1.0
    pos, neg = torch.zeros(4), torch.ones(4, 3)
    if where == "all":
        pos, neg = torch.full((4,), bad), torch.full((4, 3), bad)
    elif where == "pos":
        pos[1] = bad
    else:
        neg[2, 0] = bad
    acc = RankingMetrics()
    acc.update(pos, neg)
    with pytest.raises(NonFiniteScores, match="non-finite"):
        acc.compute()
    with pytest.raises(NonFiniteScores):
        average_precision(np.r_[pos.numpy(), neg.numpy().ravel()], np.r_[np.ones(4), np.zeros(12)])


def test_reciprocal_rank_never_counts_nan_as_a_win():
    nan = float("nan")
    pos = torch.tensor([nan, 1.0, 1.0])
    neg = torch.tensor([[0.0, 0.0], [nan, 0.0], [nan, nan]])
    # a NaN positive ranks last; a NaN negative ranks above the positive
    assert reciprocal_ranks(pos, neg).tolist() == [1 / 3, 1 / 2, 1 / 3]
    assert float(reciprocal_ranks(torch.full((2,), nan), torch.full((2, 9), nan)).mean()) == pytest.approx(0.1)
