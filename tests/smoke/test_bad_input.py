"""Every user mistake: one line naming file, line, field and what was expected; exit 2; nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import assert_nothing_written, run_cli, tiny_config, write_jsonl


@pytest.fixture
def good(tmp_path, tiny_model_dir, sentiment_file):
    return lambda **sections: tiny_config(tiny_model_dir, sentiment_file, **sections)


def test_malformed_jsonl_line(tmp_path, good, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好", "label": "pos"}\n{"text": "差", "label": \n', encoding="utf-8")
    err = run_cli(tmp_path, good(data={"train_file": str(bad)}), capsys=capsys)
    assert f"{bad}:2" in err and "JSON" in err
    assert_nothing_written(tmp_path)


def test_missing_label_column_names_columns_present(tmp_path, good, capsys):
    bad = write_jsonl(tmp_path / "cols.jsonl", [{"text": "好", "sentiment": "pos"}] * 4)
    err = run_cli(tmp_path, good(data={"train_file": str(bad)}), capsys=capsys)
    assert str(bad) in err and "label" in err and "sentiment" in err
    assert_nothing_written(tmp_path)


def test_empty_file(tmp_path, good, capsys):
    bad = tmp_path / "empty.jsonl"
    bad.write_text("\n\n", encoding="utf-8")
    err = run_cli(tmp_path, good(data={"train_file": str(bad)}), capsys=capsys)
    assert str(bad) in err and "empty" in err.lower()
    assert_nothing_written(tmp_path)


def test_single_class(tmp_path, good, capsys):
    bad = write_jsonl(tmp_path / "one.jsonl", [{"text": f"好{i}", "label": "pos"} for i in range(40)])
    err = run_cli(tmp_path, good(data={"train_file": str(bad)}), capsys=capsys)
    assert str(bad) in err and "2" in err and "label" in err
    assert_nothing_written(tmp_path)


def test_unseen_label_in_eval_data(tmp_path, good, capsys):
    val = write_jsonl(
        tmp_path / "val.jsonl", [{"text": "好", "label": "pos"}, {"text": "嗯", "label": "meh"}]
    )
    err = run_cli(tmp_path, good(data={"validation_file": str(val)}), capsys=capsys)
    assert f"{val}:2" in err and "meh" in err and "label" in err
    assert_nothing_written(tmp_path)


def test_non_utf8_bytes(tmp_path, good, capsys):
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes(
        '{"text": "好", "label": "pos"}\n'.encode() + '{"text": "差", "label": "neg"}\n'.encode("gbk")
    )
    err = run_cli(tmp_path, good(data={"train_file": str(bad)}), capsys=capsys)
    assert f"{bad}:2" in err and "UTF-8" in err
    assert_nothing_written(tmp_path)


def test_unknown_config_key_suggests_nearest(tmp_path, good, capsys):
    err = run_cli(tmp_path, good(train={"lrr": 0.1}), capsys=capsys)
    assert "train.lrr" in err and "train.lr" in err
    assert_nothing_written(tmp_path)


def test_wrong_type_override(tmp_path, good, capsys):
    err = run_cli(tmp_path, good(), "train.lr=abc", capsys=capsys)
    assert "train.lr" in err and "abc" in err and "number" in err
    assert_nothing_written(tmp_path)


def test_model_path_missing(tmp_path, good, capsys):
    err = run_cli(tmp_path, good(model={"name_or_path": str(tmp_path / "nope")}), capsys=capsys)
    assert str(tmp_path / "nope") in err
    assert_nothing_written(tmp_path)


def test_model_folder_without_weights(tmp_path, good, tiny_model_dir, capsys):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    err = run_cli(tmp_path, good(model={"name_or_path": str(folder)}), capsys=capsys)
    assert str(folder) in err and "weights" in err
    assert_nothing_written(tmp_path)


def test_existing_run_folder_is_refused(tmp_path, good, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("mine")
    err = run_cli(tmp_path, good(), capsys=capsys)
    assert str(run) in err and "--overwrite" in err
    assert (run / "precious.txt").read_text() == "mine"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  lr: [1, 2]\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "train", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{cfg}" in proc.stderr and "train.lr" in proc.stderr
