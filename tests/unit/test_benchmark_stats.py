"""Benchmark helpers: baseline_tfidf.py's paired bootstrap intervals, techniques.py's --deadline, and
sft_throughput.py's shared batch order and loss-curve comparison."""

from __future__ import annotations

import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from baseline_tfidf import paired_bootstrap  # noqa: E402
from harness import compare_losses  # noqa: E402


def _probs(p_positive: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_positive, p_positive], axis=1)  # [n, 2]


def test_identical_predictions_differ_by_nothing():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 300)
    probs = _probs(rng.random(300))
    out = paired_bootstrap(probs, probs, gold, resamples=200)
    assert out["auc_diff"] == 0 and out["auc_diff_ci95"] == [0.0, 0.0]
    assert out["accuracy_diff"] == 0 and out["accuracy_diff_ci95"] == [0.0, 0.0]


def test_a_better_ranker_gets_an_interval_above_zero_around_sklearns_difference():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 2, 400)
    good = _probs(np.clip(gold * 0.6 + rng.random(400) * 0.5, 0, 1))  # mostly right
    noisy = _probs(rng.random(400))  # chance
    out = paired_bootstrap(good, noisy, gold, resamples=300)
    expected = roc_auc_score(gold, good[:, 1]) - roc_auc_score(gold, noisy[:, 1])
    assert abs(out["auc_diff"] - expected) < 1e-12
    low, high = out["auc_diff_ci95"]
    assert 0 < low < expected < high
    assert out["accuracy_diff_ci95"][0] > 0
    # Seeded: the same inputs give the same intervals.
    assert paired_bootstrap(good, noisy, gold, resamples=300) == out


def test_the_techniques_deadline_is_the_next_such_time_of_day():
    import calendar

    from techniques import next_time

    evening = calendar.timegm((2026, 11, 22, 23, 50, 0))
    assert next_time("23:55", evening) - evening == 5 * 60
    assert next_time("00:30", evening) - evening == 40 * 60  # after midnight: tomorrow, not already past
    assert next_time("23:50", evening) == evening


def test_compare_losses_pairs_steps():
    out = compare_losses([2.0, 1.0, 4.0], [2.5, 1.0, 3.0, 9.9])  # the longer curve's extra step is ignored
    assert out["steps"] == 3
    assert np.isclose(out["mean_abs_diff"], 0.5) and out["max_abs_diff"] == 1.0
    assert np.isclose(out["mean_rel_diff"], (0.25 + 0 + 0.25) / 3)


def test_the_trainer_gets_glmtunes_batches_in_glmtunes_order():
    """sft_throughput hands the Trainer glmtune's length-grouped batches, concatenated, for sequential sampling:
    8 at a time they are exactly the batches glmtune's own training loader yields."""
    from types import SimpleNamespace

    from sft_throughput import glmtune_order

    from glmtune.data.sft import make_sft_loader
    from glmtune.data.templates import EncodedConversation

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, 100).tolist()
    args = SimpleNamespace(
        model="m", dataset="d", template="chatml", steps=12, batch_size=8, max_seq_len=64, precision="no"
    )
    order = glmtune_order(args, lengths)
    assert sorted(order) == list(range(100))
    examples = [EncodedConversation(input_ids=[1] * n, labels=[1] * n) for n in lengths]
    loader = make_sft_loader(examples, batch_size=8, pad_id=0, seed=42, shuffle=True)
    batches = [b["index"].tolist() for b in loader]
    assert [order[i : i + 8] for i in range(0, 100, 8)] == batches
    # Length-grouped: batches are far less mixed in length than the shuffled order would be.
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)
