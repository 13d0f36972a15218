"""SFT user mistakes through the CLI: one line naming file, line and field, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_nothing_written, chat_rows, run_cli, sft_config, write_jsonl

pytestmark = pytest.mark.usefixtures(
    "reset_accelerate"
)  # a check after the Accelerator exists leaves no state
GOOD = chat_rows(20)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def with_bad_line(tmp_path: Path, bad: dict, line: int = 5) -> Path:
    """The good conversations with ``bad`` as line ``line`` of the file."""
    rows = GOOD[: line - 1] + [bad] + GOOD[line - 1 :]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def sft(tmp_path, tiny_model_dir):
    return lambda data_file, **data: sft_config(tiny_model_dir, {"train_file": str(data_file), **data})


def test_last_turn_not_the_assistants(tmp_path, sft, capsys):
    bad = with_bad_line(tmp_path, {"messages": [{"role": "user", "content": "好"}]})
    err = run_cli(tmp_path, sft(bad), capsys=capsys)
    assert f"{bad}:5" in err and "messages" in err and "last message is the user's" in err
    assert_nothing_written(tmp_path)


def test_unknown_role(tmp_path, sft, capsys):
    messages = [{"role": "human", "content": "好"}, {"role": "assistant", "content": "很好"}]
    bad = with_bad_line(tmp_path, {"messages": messages})
    err = run_cli(tmp_path, sft(bad), capsys=capsys)
    assert f"{bad}:5" in err and "messages[0].role" in err and "'human'" in err and "assistant" in err
    assert_nothing_written(tmp_path)


def test_empty_message_list(tmp_path, sft, capsys):
    bad = with_bad_line(tmp_path, {"messages": []})
    err = run_cli(tmp_path, sft(bad), capsys=capsys)
    assert f"{bad}:5" in err and "no messages" in err
    assert_nothing_written(tmp_path)


def test_tool_call_without_a_tool_schema(tmp_path, sft, capsys):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
    messages = [
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    bad = with_bad_line(tmp_path, {"messages": messages, "tools": [{**TOOL, "function": {"name": "search"}}]})
    err = run_cli(tmp_path, sft(bad), capsys=capsys)
    assert f"{bad}:5" in err and "get_weather" in err and "tools" in err and "search" in err
    assert_nothing_written(tmp_path)


def test_template_the_tokenizer_lacks(tmp_path, sft, capsys):
    good = write_jsonl(tmp_path / "chat.jsonl", GOOD)
    err = run_cli(tmp_path, sft(good, template="chatml"), capsys=capsys)
    assert "data.template" in err and "<|im_start|>" in err and "chatml" in err
    assert_nothing_written(tmp_path)


def test_auto_template_without_a_chat_template(tmp_path, sft, capsys):
    good = write_jsonl(tmp_path / "chat.jsonl", GOOD)
    err = run_cli(tmp_path, sft(good, template="auto"), capsys=capsys)
    assert "data.template" in err and "no chat template" in err and "plain" in err
    assert_nothing_written(tmp_path)


def test_unknown_conversation_format(tmp_path, sft, capsys):
    bad = write_jsonl(tmp_path / "qa.jsonl", [{"question": "好", "answer": "很好"}] * 12)
    err = run_cli(tmp_path, sft(bad), capsys=capsys)
    assert str(bad) in err and "question" in err and "messages" in err
    assert_nothing_written(tmp_path)


def test_nothing_fits_max_seq_len(tmp_path, sft, capsys):
    good = write_jsonl(tmp_path / "chat.jsonl", GOOD)
    cfg = sft(good)
    cfg["train"]["max_seq_len"] = 3
    err = run_cli(tmp_path, cfg, capsys=capsys)
    assert "train.max_seq_len" in err and "dropped" in err
    assert_nothing_written(tmp_path)


def test_missing_weighted_train_file(tmp_path, tiny_model_dir, capsys):
    good = write_jsonl(tmp_path / "chat.jsonl", GOOD)
    missing = tmp_path / "nope.jsonl"
    files = [{"path": str(good)}, {"path": str(missing), "weight": 2}]
    err = run_cli(tmp_path, sft_config(tiny_model_dir, {"train_files": files}), capsys=capsys)
    assert str(missing) in err
    assert_nothing_written(tmp_path)


def test_predict_on_a_prompt_file_that_ends_with_a_reply(tmp_path, capsys):
    """predict reads prompts: a messages record must end with the user's turn (checked before loading a model)."""
    from glmtune.core.errors import UserError
    from glmtune.infer.lm import read_prompts

    bad = write_jsonl(tmp_path / "p.jsonl", [GOOD[0]])
    with pytest.raises(UserError) as info:
        read_prompts(bad)
    assert f"{bad}:1" in str(info.value) and "user or tool message last" in str(info.value)
    messages = write_jsonl(tmp_path / "q.jsonl", [{"messages": GOOD[0]["messages"][:1]}])
    alpaca = write_jsonl(tmp_path / "r.jsonl", [{"instruction": "翻译", "input": "好"}])
    texts = [p.messages[-1].content for path in (messages, alpaca) for p in read_prompts(path)]
    assert texts == ["这个赞", "翻译\n好"]
