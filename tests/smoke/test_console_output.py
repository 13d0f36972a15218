"""What a newcomer sees while a run trains: the progress bar, glmtune's own lines and real problems — no library
deprecation notices (those that are a library's are filtered by exact message in glmtune.core._compat)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.helpers import write_jsonl


def test_a_prompt_tuning_sft_run_prints_no_library_warnings(tmp_path, tiny_model_dir):
    """Prompt tuning wraps the model with peft (which read transformers' deprecated is_gradient_checkpointing)
    and generates (where peft warned about position ids on every step): both used to reach the console."""
    rows = [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好的"}]}
    ] * 24
    cfg = {
        "task": "sft",
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {
            "train_file": str(write_jsonl(tmp_path / "chat.jsonl", rows)),
            "template": "plain",
            "validation_size": 2,
            "test_size": 2,
        },
        "method": {"name": "prompt_tuning"},
        "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 32, "mixed_precision": "no"},
        "generate": {"max_new_tokens": 2},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "train", str(path), "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = done.stdout + done.stderr
    assert "Warning" not in console, console[-2000:]
    assert "warnings.warn" not in console
