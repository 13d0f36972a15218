"""data.leakage: examples shared between train, validation and test (compared with whitespace, punctuation and
case normalised) are counted at data load, shown in the summary with examples and warned about; with
``data.dedup_across_splits`` they leave the training split."""

from __future__ import annotations

import logging

from glmtune.core.config import DataConfig
from glmtune.data.classification import load_classification
from glmtune.data.leakage import normalise
from glmtune.data.sft import load_sft
from tests.helpers import write_jsonl

TRAIN = [{"text": f"第{i}条评论，内容不同。", "label": "pos" if i % 2 else "neg"} for i in range(40)]
# 4 of 6 test texts are training texts, written a little differently
TEST = [
    {"text": "第1条评论 内容不同", "label": "pos"},
    {"text": "第2条评论，内容不同！", "label": "neg"},
    {"text": "  第3条评论，内容不同。 ", "label": "pos"},
    {"text": "第4条评论,内容不同.", "label": "neg"},
    {"text": "全新的评论", "label": "pos"},
    {"text": "另一条新评论", "label": "neg"},
]


def test_normalise_ignores_whitespace_punctuation_width_and_case():
    assert normalise("Hello, World!") == normalise("hello world") == "helloworld"
    assert normalise("你好，世界！") == normalise("你好 世界") == normalise("你好,世界!")
    assert normalise("ＡＢＣ１２３") == "abc123"  # full-width forms
    assert normalise("？！。") == ""


def test_a_leaking_test_split_is_counted_and_warned_about(tmp_path, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test = write_jsonl(tmp_path / "test.jsonl", TEST)
    cfg = DataConfig(train_file=str(train), test_file=str(test), validation_size=0)
    with caplog.at_level(logging.WARNING, logger="glmtune.data.leakage"):
        data = load_classification(cfg)
    leak = data.summary()["leakage"]["train/test"]
    assert (leak["count"], leak["of"]) == (4, 6)
    assert leak["examples"][0] == f"'第1条评论 内容不同' ({test}:1; also {train}:2)"
    assert len(leak["examples"]) == 3
    assert "4 of 6 test examples are also in train" in caplog.text
    assert "data.dedup_across_splits: true" in caplog.text
    assert len(data.train) == 40  # off by default: nothing removed


def test_dedup_across_splits_removes_them_from_training(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    test = write_jsonl(tmp_path / "test.jsonl", TEST)
    cfg = DataConfig(train_file=str(train), test_file=str(test), validation_size=0, dedup_across_splits=True)
    data = load_classification(cfg)
    assert len(data.train) == 36 and data.summary()["leakage"]["removed_from_train"] == 4
    assert not {normalise(e.text) for e in data.train} & {normalise(e.text) for e in data.test}


def test_no_leakage_is_an_empty_report(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    assert load_classification(DataConfig(train_file=str(train))).summary()["leakage"] == {}


def test_sft_conversations_leaking_into_validation(tmp_path, caplog):
    rows = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(20)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(
        tmp_path / "validation.jsonl", [rows[3], {"instruction": "新问题", "output": "新"}]
    )
    cfg = DataConfig(train_file=str(train), validation_file=str(validation), test_size=0)
    with caplog.at_level(logging.WARNING, logger="glmtune.data.leakage"):
        data = load_sft(cfg)
    assert data.summary()["leakage"]["train/validation"]["count"] == 1
    assert "1 of 2 validation examples are also in train" in caplog.text
    cfg = DataConfig(
        train_file=str(train), validation_file=str(validation), test_size=0, dedup_across_splits=True
    )
    deduped = load_sft(cfg)
    assert len(deduped.train) == 19 and deduped.summary()["leakage"]["removed_from_train"] == 1
