"""data.dataset_info: a LLaMA-Factory dataset_info.json read as LLaMA-Factory reads it (file_name, formatting,
columns, tags), so a user switches toolkits without touching their data; what glmtune cannot do is refused."""

from __future__ import annotations

import json

import pytest

from glmtune.core.config import DataConfig, TrainSource
from glmtune.core.errors import UserError
from glmtune.data.classification import load_classification
from glmtune.data.conversation import Message
from glmtune.data.sft import load_sft
from tests.helpers import write_jsonl

WEATHER = {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {}}}


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def info(tmp_path):
    """A dataset_info.json with three datasets of different formats, in a data/ folder of their own."""
    data = tmp_path / "data"
    data.mkdir()
    # alpaca with LLaMA-Factory's column names (prompt/query/response → instruction/input/output)
    alpaca = [{"q": f"问题{i}", "ctx": f"背景{i}", "a": f"回答{i}", "sys": "简洁"} for i in range(10)]
    (data / "alpaca_zh.json").write_text(json.dumps(alpaca, ensure_ascii=False), encoding="utf-8")
    # sharegpt with its default tags, a function call and tools as a JSON string
    call = json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False)
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": f"北京天气{i}？"},
                {"from": "function_call", "value": call},
                {"from": "observation", "value": "晴"},
                {"from": "gpt", "value": "晴天。"},
            ],
            "tools": json.dumps([WEATHER], ensure_ascii=False),
        }
        for i in range(10)
    ]
    write_jsonl(data / "glaive_toolcall.jsonl", sharegpt)
    # OpenAI-style messages through sharegpt's tags, in a folder of two files
    (data / "chat").mkdir()
    for part in (0, 1):
        rows = [
            {
                "msgs": [
                    {"role": "system", "content": "你是助手"},
                    {"role": "user", "content": f"你好{part}-{i}"},
                    {"role": "assistant", "content": "你好！"},
                ]
            }
            for i in range(5)
        ]
        write_jsonl(data / "chat" / f"part{part}.jsonl", rows)
    entries = {
        "alpaca_zh": {
            "file_name": "alpaca_zh.json",
            "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys"},
        },
        "glaive_toolcall": {
            "file_name": "glaive_toolcall.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
        "openai_chat": {
            "file_name": "chat",
            "formatting": "sharegpt",
            "columns": {"messages": "msgs"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        },
        "from_hub": {"hf_hub_url": "someone/data"},
        "ranked": {"file_name": "alpaca_zh.json", "ranking": True},
        "pictures": {"file_name": "alpaca_zh.json", "columns": {"images": "img"}},
    }
    path = data / "dataset_info.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_three_datasets_of_different_formats(info):
    alpaca = load_sft(DataConfig(dataset_info=str(info), dataset="alpaca_zh", validation_size=0, test_size=0))
    assert len(alpaca.train) == 10
    first = alpaca.train[0]
    assert first.messages == [
        Message("system", "简洁"),
        Message("user", "问题0\n背景0"),
        Message("assistant", "回答0"),
    ]
    assert first.source.endswith("alpaca_zh.json")

    tools = load_sft(
        DataConfig(dataset_info=str(info), dataset="glaive_toolcall", validation_size=0, test_size=0)
    )
    conv = tools.train[0]
    assert conv.tools == [WEATHER] and conv.messages[1].tool_calls[0]["function"]["name"] == "get_weather"

    chat = load_sft(DataConfig(dataset_info=str(info), dataset="openai_chat", validation_size=0, test_size=0))
    assert len(chat.train) == 10  # both files of the folder
    assert {c.source.rsplit("/", 1)[-1] for c in chat.train} == {"part0.jsonl", "part1.jsonl"}
    assert chat.train[0].messages[0] == Message("system", "你是助手")


def test_train_files_mix_datasets_by_name(info):
    sources = [TrainSource(dataset="alpaca_zh"), TrainSource(dataset="openai_chat", weight=0.5)]
    data = load_sft(DataConfig(dataset_info=str(info), train_files=sources, validation_size=0, test_size=0))
    assert len(data.train) == 10 + 5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", ["no dataset 'missing'", "one of: alpaca_zh, glaive_toolcall, openai_chat"]),
        ("from_hub", ["comes from hf_hub_url", "download it and set file_name"]),
        ("ranked", ["sets ranking", "preference"]),
        ("pictures", ["has a 'images' column", "text datasets only"]),
    ],
)
def test_what_glmtune_cannot_do_is_refused(info, name, expected):
    message = error_of(load_sft, DataConfig(dataset_info=str(info), dataset=name))
    for part in expected:
        assert part in message


def test_classification_through_dataset_info(tmp_path):
    rows = [{"review": f"好{i}" if i % 2 else f"差{i}", "y": i % 2} for i in range(20)]
    write_jsonl(tmp_path / "reviews.jsonl", rows)
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"reviews": {"file_name": "reviews.jsonl"}}), encoding="utf-8")
    cfg = DataConfig(dataset_info=str(info), dataset="reviews", columns={"text": "review", "label": "y"})
    assert load_classification(cfg).labels == ["0", "1"]


def test_dataset_info_needs_a_dataset_name(tmp_path):
    message = error_of(DataConfig, dataset_info="x.json", train_file="a.jsonl")
    assert "no dataset of it is named" in message
