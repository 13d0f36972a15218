"""Using a finished run reads files as training read them (``data.columns``, ``data.encoding``), and the server
refuses tools that the served chat format cannot show to the model, naming ``tools``, instead of dropping them."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.conversation import Message
from glmtune.data.templates import resolve_template
from glmtune.infer.lm import read_prompts
from glmtune.infer.serve.registry import ServedModel
from tests.helpers import bpe_tokenizer, tool_rows, write_jsonl


def gbk_csv(path, rows):
    with path.open("w", encoding="gbk", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_prompts_are_read_with_the_runs_columns_and_encoding(tmp_path):
    path = gbk_csv(tmp_path / "prompts.csv", [{"question": "你好", "context": "世界", "sys": "简洁"}])
    data = DataConfig(
        train_file="x.csv", columns={"instruction": "question", "input": "context", "system": "sys"}
    )
    (prompt,) = read_prompts(path, data)
    assert prompt.messages == [Message("system", "简洁"), Message("user", "你好\n世界")]
    with pytest.raises(UserError, match="no prompt column"):
        read_prompts(path)  # without the run's names, 'question' is nobody's prompt


def test_conversation_prompts_follow_the_runs_tags(tmp_path):
    row = {"dialog": [{"speaker": "customer", "text": "你好"}]}
    columns = {"messages": "dialog", "role_tag": "speaker", "content_tag": "text", "user_tag": "customer"}
    (prompt,) = read_prompts(
        write_jsonl(tmp_path / "p.jsonl", [row]), DataConfig(train_file="x", columns=columns)
    )
    assert prompt.messages == [Message("user", "你好")]


def served(template: str, chat_template: str | None) -> ServedModel:
    tokenizer = bpe_tokenizer("chatml" if template != "plain" else "plain", chat_template)
    fmt = resolve_template(tokenizer, template)
    lm = SimpleNamespace(
        tokenizer=tokenizer, format=fmt, cfg=SimpleNamespace(), with_knowledge=lambda m, t=None: m
    )
    return ServedModel("m", "sft", lm=lm)


def test_the_server_refuses_tools_its_format_cannot_show():
    model = served("plain", None)
    tools = tool_rows()[0]["tools"]
    with pytest.raises(UserError) as caught:
        model.chat_prompt([Message("user", "明天北京下雨吗")], tools)
    assert caught.value.field == "tools" and "cannot show tools" in str(caught.value)
    assert model.chat_prompt([Message("user", "你好")], None), "without tools the same model answers"


def test_the_server_shows_tools_to_a_format_that_renders_them():
    from tests.unit.data.test_templates import QWEN25

    model = served("chatml", QWEN25)
    tools = tool_rows()[0]["tools"]
    ids = model.chat_prompt([Message("user", "明天北京下雨吗")], tools)
    assert "get_weather" in model.lm.tokenizer.decode(ids)
