"""Regression and ranking metrics against scipy/scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, ndcg_score, r2_score, roc_auc_score

from glmtune.metrics.ranking import ranking_metrics, regression_metrics


def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=50)
    pred = gold + rng.normal(scale=0.5, size=50)
    got = regression_metrics(gold, pred)
    assert got["n"] == 50
    assert got["mse"] == pytest.approx(np.mean((gold - pred) ** 2))
    assert got["rmse"] == pytest.approx(math.sqrt(got["mse"]))
    assert got["mae"] == pytest.approx(np.mean(np.abs(gold - pred)))
    assert got["r2"] == pytest.approx(r2_score(gold, pred))
    assert got["pearson"] == pytest.approx(stats.pearsonr(gold, pred).statistic)
    assert got["spearman"] == pytest.approx(stats.spearmanr(gold, pred).statistic)


def test_regression_correlations_are_none_when_undefined():
    got = regression_metrics([1.0, 1.0, 1.0], [0.5, 1.0, 2.0])
    assert got["pearson"] is None and got["spearman"] is None
    assert got["mae"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no examples"):
        regression_metrics([], [])


def test_ranking_by_hand():
    # user a: the relevant item is ranked 2nd; user b: 1st; user c: one item (skipped); user d: none relevant.
    groups = ["a", "a", "a", "b", "b", "c", "d", "d"]
    scores = [0.9, 0.5, 0.1, 0.8, 0.2, 0.7, 0.3, 0.4]
    rel = [0, 1, 0, 1, 0, 1, 0, 0]
    got = ranking_metrics(groups, scores, rel, rel, ks=(1, 2))
    assert got["groups"] == 4 and got["groups_skipped_single"] == 1 and got["groups_skipped_one_label"] == 1
    assert got["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["hit@1"] == pytest.approx(0.5) and got["hit@2"] == pytest.approx(1.0)
    assert got["map"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["group_auc"] == pytest.approx((0.5 + 1.0) / 2)  # a: 1 of 2 negatives below the positive
    # nDCG averages over a, b and d (d has no gain: sklearn scores it 0).
    ndcg_a = (1 / math.log2(3)) / 1.0
    assert got["ndcg@2"] == pytest.approx((ndcg_a + 1.0 + 0.0) / 3)


def test_ranking_matches_sklearn_per_group_on_random_data():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 6)
    scores = rng.normal(size=groups.size)
    gains = rng.integers(0, 4, size=groups.size).astype(float)
    rel = gains >= 2
    got = ranking_metrics(groups, scores, gains, rel, ks=(3,))
    ndcg, ap, auc = [], [], []
    for g in range(20):
        m = groups == g
        ndcg.append(ndcg_score(gains[m][None], scores[m][None], k=3))
        if 0 < rel[m].sum() < m.sum():
            ap.append(average_precision_score(rel[m], scores[m]))
            auc.append(roc_auc_score(rel[m], scores[m]))
    assert got["ndcg@3"] == pytest.approx(np.mean(ndcg))
    assert got["map"] == pytest.approx(np.mean(ap))
    assert got["group_auc"] == pytest.approx(np.mean(auc))
    assert got["groups_skipped_one_label"] == 20 - len(ap)


def test_ranking_with_no_qualifying_group_gives_none():
    got = ranking_metrics(["a", "b"], [0.1, 0.2], [1, 0], [True, False], ks=(1,))
    assert got["map"] is None and got["ndcg@1"] is None and got["groups_skipped_single"] == 2
