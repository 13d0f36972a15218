"""data.summary: one table of counts per split (read, kept, truncated, dropped with the reason, used) that the
loaders fill, the tasks complete at encoding, and data_summary.json repeats; data.run_config: what config.yaml
records (absolute data paths, no dataset a file overrode)."""

from __future__ import annotations

import json
import os

import pytest

from glmtune.core import config as config_mod
from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import load_classification
from glmtune.data.leakage import DEDUP_REASON
from glmtune.data.run_config import run_config
from glmtune.data.sft import load_sft
from glmtune.data.summary import SplitCounts, counts_table, new_counts
from tests.helpers import chat_rows, write_jsonl


def test_the_table_is_aligned_and_names_every_reason():
    counts = new_counts({"train": 470, "validation": 4, "test": 4})
    counts["train"].remove(DEDUP_REASON, 13)
    counts["train"].add("augmented copies (data.augment)", 20)
    counts["train"].encoded(7, 213, 64)
    counts["validation"].encoded(0, 3, 64)
    lines = counts_table(counts).splitlines()
    assert lines[0].split() == ["split", "read", "kept", "truncated", "dropped", "used"]
    assert lines[1].split() == ["train", "470", "457", "7", "213", "264"]  # 457 + 20 - 213
    assert lines[2].split() == ["validation", "4", "4", "0", "3", "1"]
    assert lines[3].split() == ["test", "4", "4", "0", "0", "4"]
    assert len({len(line) for line in lines[:4]}) == 1, "columns aligned"
    assert lines[4:] == [
        f"not kept: {DEDUP_REASON} (train 13)",
        "added: augmented copies (data.augment) (train 20)",
        "dropped: longer than train.max_seq_len=64 even without earlier rounds (train 213, validation 3)",
    ]


def test_counts_as_json_hold_the_same_numbers():
    counts = SplitCounts(read=10)
    counts.resize("mixing weights (data.train_files)", 10, 14)
    counts.encoded(1, 2, 32)
    assert counts.to_json() == {
        "read": 10,
        "kept": 10,
        "truncated": 1,
        "dropped": 2,
        "used": 12,
        "removed": {},
        "added": {"mixing weights (data.train_files)": 4},
        "dropped_by": {"longer than train.max_seq_len=32 even without earlier rounds": 2},
    }


def test_sft_loader_counts_what_each_split_read_and_kept(tmp_path):
    rows = chat_rows(40)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[:3] + chat_rows(5, seed=9)[3:])
    cfg = DataConfig(
        train_file=str(train),
        validation_file=str(validation),
        test_size=4,
        max_train_samples=30,
        dedup_across_splits=True,
    )
    data = load_sft(cfg)
    counts = data.counts
    assert (counts["train"].read, counts["validation"].read, counts["test"].read) == (36, 5, 4)
    assert counts["train"].removed["over data.max_train_samples"] == 6
    assert counts["train"].kept == len(data.train) and counts["validation"].kept == len(data.validation)
    assert counts["train"].removed.get(DEDUP_REASON, 0) == 30 - len(data.train)
    summary = json.loads(json.dumps(data.summary()))
    assert summary["train"]["counts"]["kept"] == summary["train"]["total"] == len(data.train)


def test_classification_loader_counts_read_and_kept(tmp_path):
    rows = [{"text": f"文本{i}", "label": "a" if i % 2 else "b"} for i in range(40)]
    test = write_jsonl(tmp_path / "test.jsonl", rows[:5] + [{"text": "新的", "label": "a"}])
    data = load_classification(
        DataConfig(
            train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)),
            test_file=str(test),
            validation_size=10,
            dedup_across_splits=True,
        )
    )
    counts = data.counts
    assert (counts["train"].read, counts["validation"].read, counts["test"].read) == (30, 10, 6)
    assert counts["train"].kept == len(data.train) == 30 - counts["train"].removed[DEDUP_REASON]
    assert data.summary()["test"]["counts"]["used"] == 6


# --------------------------------------------------------------------------- config.yaml's data section


def test_run_config_records_absolute_paths_and_no_overridden_dataset(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    write_jsonl(tmp_path / "test.jsonl", chat_rows(4))
    monkeypatch.chdir(tmp_path)
    cfg = config_mod.load(
        None,
        [
            "task=sft",
            "data.dataset=chatterbot-zh",
            "data.train_file=train.jsonl",
            "data.test_file=./test.jsonl",
        ],
    )
    recorded = run_config(cfg)
    assert cfg.data.train_file == "train.jsonl", "the run's own config is left as it is"
    assert recorded.data.train_file == os.path.join(tmp_path, "train.jsonl")
    assert recorded.data.test_file == os.path.join(tmp_path, "test.jsonl")
    assert recorded.data.dataset is None
    again = config_mod.from_dict(__import__("yaml").safe_load(config_mod.dump(recorded)))
    assert again.data == recorded.data, "config.yaml re-runs as recorded"
    monkeypatch.chdir("/")
    assert len(load_sft(again.data).test) == 4, "and reads its files from anywhere"


def info_file(tmp_path, names: list[str]):
    for name in names:
        write_jsonl(
            tmp_path / f"{name}.jsonl", [{"instruction": f"{name}{i}", "output": "好"} for i in range(8)]
        )
    info = {name: {"file_name": f"{name}.jsonl"} for name in names}
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


def test_dataset_info_without_a_dataset_uses_its_only_one(tmp_path):
    path = info_file(tmp_path, ["only"])
    cfg = config_mod.from_dict(
        {"task": "sft", "data": {"dataset_info": str(path), "validation_size": 0, "test_size": 0}}
    )
    assert cfg.data.dataset is None, "no built-in default slipped in"
    assert [c.messages[0].content for c in load_sft(cfg.data).train][:2] == ["only0", "only1"]
    assert run_config(cfg).data.dataset == "only", "config.yaml names the dataset that was read"


def test_dataset_info_without_a_dataset_names_its_datasets(tmp_path):
    path = info_file(tmp_path, ["first", "second"])
    cfg = config_mod.from_dict({"task": "classification", "data": {"dataset_info": str(path)}})
    for load in (load_sft, load_classification):
        with pytest.raises(UserError) as caught:
            load(cfg.data)
        message = str(caught.value)
        assert "field 'data.dataset'" in message and "defines 2 datasets" in message
        assert "one of: first, second" in message
