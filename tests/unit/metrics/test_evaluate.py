"""Classification metrics against numbers worked out by hand, and against scikit-learn called directly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from glmtune.metrics import (
    classification_metrics,
    format_metrics_table,
    plot_confusion,
    prediction_rows,
    write_predictions,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["pos", "neg", "mid"]
# 3 classes, 8 examples. argmax → [0, 1, 2, 0, 1, 2, 0, 2]; right on examples 0, 1, 2, 3, 5.
GOLD = [0, 1, 2, 0, 0, 2, 1, 1]
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.2, 0.7],
        [0.6, 0.3, 0.1],
        [0.3, 0.4, 0.3],
        [0.1, 0.1, 0.8],
        [0.5, 0.4, 0.1],
        [0.2, 0.3, 0.5],
    ]
)


def test_metrics_match_hand_computed_values():
    m = classification_metrics(GOLD, PROBS, LABELS, loss=0.25)
    # confusion (rows gold, columns predicted): pos → 2 pos, 1 neg; neg → 1 each; mid → 2 mid
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 1], [0, 0, 2]]
    assert m["labels"] == LABELS
    assert m["n"] == 8 and m["loss"] == 0.25
    assert m["accuracy"] == pytest.approx(5 / 8)
    # per class: precision = diagonal / column sum, recall = diagonal / row sum
    precision = [2 / 3, 1 / 2, 2 / 3]
    recall = [2 / 3, 1 / 3, 1.0]
    f1 = [2 / 3, 0.4, 0.8]
    support = [3, 3, 2]
    for i, name in enumerate(LABELS):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0.8) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 3 * 0.4 + 2 * 0.8) / 8)
    # single-label: micro precision = recall = F1 = accuracy
    for key in ("micro_precision", "micro_recall", "micro_f1"):
        assert m[key] == pytest.approx(5 / 8)
    # one-vs-rest AUC by counting pairs (ties count 1/2): pos 14/15, neg 13/15, mid 12/12
    assert m["auc"] == pytest.approx((14 / 15 + 13 / 15 + 1) / 3)


def test_metrics_agree_with_sklearn_and_are_plain_json():
    m = classification_metrics(GOLD, PROBS, LABELS)
    pred = PROBS.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(GOLD, pred))
    for avg in ("macro", "micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(skm.f1_score(GOLD, pred, average=avg))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(GOLD, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(GOLD, pred, average="macro"))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(GOLD, PROBS, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(GOLD, pred).tolist()
    assert "loss" not in m
    assert json.loads(json.dumps(m)) == m  # plain Python values only
    assert type(m["accuracy"]) is float and type(m["n"]) is int


def test_float32_probs_give_the_same_numbers():
    m64 = classification_metrics(GOLD, PROBS, LABELS)
    m32 = classification_metrics(GOLD, PROBS.astype(np.float32), LABELS)
    assert m32["auc"] == pytest.approx(m64["auc"])
    assert m32["confusion_matrix"] == m64["confusion_matrix"]


def test_half_precision_probs_do_not_trip_sklearn():
    import torch

    probs = torch.softmax(torch.randn(64, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    rough = probs.to(torch.bfloat16).float().numpy()  # rows sum to 1 only within ~1e-2
    gold = list(range(5)) * 12 + [0, 1, 2, 3]
    m = classification_metrics(gold, rough, list("abcde"))
    per_class = [skm.roc_auc_score(np.array(gold) == c, rough[:, c]) for c in range(5)]
    assert m["auc"] == pytest.approx(np.mean(per_class))


def test_absent_class_keeps_its_row_and_auc_is_none():
    gold = [0, 1, 0, 1]  # class 2 never appears
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning leaks out
        m = classification_metrics(gold, probs, LABELS)
    assert m["auc"] is None
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert m["per_class"]["mid"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_binary_auc_uses_the_positive_column():
    gold = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(gold, np.stack([1 - p1, p1], axis=1), ["neg", "pos"])
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ranked right
    assert m["auc"] == pytest.approx(skm.roc_auc_score(gold, p1))
    assert classification_metrics([1, 1], np.array([[0.2, 0.8], [0.6, 0.4]]), ["neg", "pos"])["auc"] is None


def test_bad_inputs_are_caller_bugs():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(GOLD, PROBS[:, :2], LABELS)
    with pytest.raises(ValueError, match="gold labels"):
        classification_metrics(GOLD[:3], PROBS, LABELS)
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(GOLD, PROBS * 3, LABELS)  # logits, not probabilities
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([0, 1, 2, 0, 0, 2, 1, 3], PROBS, LABELS)


def test_table_lists_the_numbers_per_split():
    val = classification_metrics(GOLD, PROBS, LABELS, loss=0.5)
    table = format_metrics_table({"validation": val, "test": {"accuracy": 0.5, "auc": None, "n": 2}})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "validation", "test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == [
        "accuracy",
        "macro_f1",
        "micro_f1",
        "macro_precision",
        "macro_recall",
        "auc",
        "loss",
        "n",
    ]
    assert rows["accuracy"] == ["0.6250", "0.5000"]
    assert rows["macro_f1"] == [f"{val['macro_f1']:.4f}", "-"]
    assert rows["auc"] == ["0.9333", "-"]
    assert rows["loss"] == ["0.5000", "-"]
    assert rows["n"] == ["8", "2"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_confusion_plot_is_a_png_even_with_chinese_labels(tmp_path):
    path = tmp_path / "confusion.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing CJK glyphs must not surface as warnings
        plot_confusion([[5, 1], [2, 7]], ["正面", "负面"], path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary left behind


def test_prediction_rows():
    rows = prediction_rows(["a", "b"], [1, 0], np.array([[0.25, 0.75], [0.6, 0.4]]), ["neg", "pos"])
    assert rows == [
        {"text": "a", "gold": "pos", "pred": "pos", "probs": {"neg": 0.25, "pos": 0.75}},
        {"text": "b", "gold": "neg", "pred": "neg", "probs": {"neg": 0.6, "pos": 0.4}},
    ]
    unlabelled = prediction_rows(["a"], None, np.array([[0.9, 0.1]]), ["neg", "pos"])
    assert unlabelled == [{"text": "a", "pred": "neg", "probs": {"neg": 0.9, "pos": 0.1}}]
    assert json.loads(json.dumps(rows)) == rows


def test_write_predictions_round_trips(tmp_path):
    rows = prediction_rows(["很好", "差"], [1, 0], np.array([[0.25, 0.75], [0.6, 0.4]]), ["负面", "正面"])
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, rows)
    text = path.read_text(encoding="utf-8")
    assert "很好" in text  # not \\u-escaped
    assert [json.loads(line) for line in text.splitlines()] == rows
