"""data.format_detect + data.columns: formats told by their fields (the ChatGLM3 finetune demo's
``conversations`` with role/content, with and without tools), every field mappable with ``data.columns`` (and
LLaMA-Factory's tags), and an ambiguous file refused with the one setting that settles it."""

from __future__ import annotations

import json

import pytest

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import load_classification
from glmtune.data.conversation import Message, load_conversations
from glmtune.data.sft import load_sft
from tests.helpers import write_jsonl

STOCK = {
    "name": "track",
    "description": "追踪指定股票的实时价格",
    "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]},
}
SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"
# The official ChatGLM3 finetune demo's format, as its README writes it: without tools, ...
DEMO_PLAIN = {
    "conversations": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "讲个笑话"},
        {"role": "assistant", "content": "好的。"},
    ]
}
# ... with the tools in the system turn and a tool turn that is a call and its observation, ...
DEMO_TOOLS = {
    "conversations": [
        {"role": "system", "content": SYSTEM, "tools": [STOCK]},
        {"role": "user", "content": "苹果的股价是多少？"},
        {"role": "assistant", "content": "我来查一下。"},
        {"role": "tool", "name": "track", "parameters": {"symbol": "AAPL"}, "observation": {"price": 190}},
        {"role": "assistant", "content": "苹果现在的股价是 190 美元。"},
    ]
}
# ... and with the tools beside the conversation (the older demo's layout).
DEMO_TOP_TOOLS = {
    "tools": [STOCK],
    "conversations": [
        {"role": "user", "content": "查一下 TSLA"},
        {"role": "tool", "name": "track", "parameters": {"symbol": "TSLA"}, "observation": "250"},
        {"role": "assistant", "content": "250 美元。"},
    ],
}


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the ChatGLM3 finetune demo


def test_chatglm3_demo_without_tools_reads_as_messages(tmp_path):
    path = tmp_path / "demo.json"
    path.write_text(json.dumps([DEMO_PLAIN], ensure_ascii=False), encoding="utf-8")
    for format in ("auto", "messages"):
        (conv,) = load_conversations(path, format)
        assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
        assert conv.messages[2] == Message("assistant", "你好！有什么可以帮你？") and conv.tools is None


def test_chatglm3_demo_with_tools_keeps_them(tmp_path):
    path = write_jsonl(tmp_path / "demo.jsonl", [DEMO_TOOLS, DEMO_TOP_TOOLS])
    in_system, beside = load_conversations(path)
    assert in_system.tools == [STOCK] and beside.tools == [STOCK]
    call = {"type": "function", "function": {"name": "track", "arguments": {"symbol": "AAPL"}}}
    assert in_system.messages[1:] == [
        Message("user", "苹果的股价是多少？"),
        Message("assistant", "我来查一下。"),
        Message("assistant", "", [call]),
        Message("tool", '{"price": 190}'),  # a non-string observation as JSON, as the demo writes it
        Message("assistant", "苹果现在的股价是 190 美元。"),
    ]
    assert in_system.system == SYSTEM
    assert [m.role for m in beside.messages] == ["user", "assistant", "tool", "assistant"]


def test_chatglm3_demo_encodes_as_chatglm3_itself_does():
    """glmtune's reading of the demo file, encoded by the chatglm3 template, equals ChatGLM3's own encoding
    of the raw demo turns (its chat format reads the demo's tool turns natively)."""
    from glmtune.data.conversation import conversations_from_records
    from glmtune.data.templates import encode_conversation
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer, chat_format
    from tests.tiny import require_shared

    tokenizer = ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))
    records = [{**row, "_line": i + 1} for i, row in enumerate([DEMO_PLAIN, DEMO_TOOLS, DEMO_TOP_TOOLS])]
    for row, conv in zip([DEMO_PLAIN, DEMO_TOOLS, DEMO_TOP_TOOLS], conversations_from_records(records, "d")):
        expected = chat_format.encode_conversation(tokenizer, row["conversations"], row.get("tools"))
        encoded = encode_conversation(tokenizer, conv, "chatglm3", max_seq_len=4096)
        assert (encoded.input_ids, encoded.labels) == expected


def test_sharegpt_and_openai_messages_still_read(tmp_path):
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    openai = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for name, row in (("s", sharegpt), ("o", openai)):
        (conv,) = load_conversations(write_jsonl(tmp_path / f"{name}.jsonl", [row]))
        assert conv.messages == [Message("user", "q"), Message("assistant", "a")]


# --------------------------------------------------------------------------- ambiguous files


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"conversations": [{"speaker": "user", "text": "q"}, {"speaker": "bot", "text": "a"}]},
            ["keys speaker, text", "data.columns: {role_tag:", "content_tag:"],
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"role": "assistant", "content": "a"}]},
            ["both 'from' and 'role'"],
        ),
        (
            {
                "messages": [{"role": "user", "content": "q"}],
                "conversations": [{"role": "user", "content": "q"}],
            },
            ["both a 'messages' and a 'conversations' column", "data.columns: {messages:"],
        ),
        (
            {"instruction": "q", "output": "a", "prompt": "q", "completion": "a"},
            ["fit several formats (alpaca, prompt_completion)", "data.format: prompt_completion"],
        ),
        (
            {"question": "q", "context": "c", "answer": "a"},
            ["cannot tell the conversation format", "data.columns: {instruction: question, output: answer}"],
        ),
    ],
)
def test_an_ambiguous_file_names_what_it_looked_like_and_the_setting(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    message = error_of(load_conversations, path)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message


# --------------------------------------------------------------------------- column mapping


def test_alpaca_with_other_column_names(tmp_path):
    rows = [{"question": "翻译", "context": "hello", "answer": "你好", "sys": "简洁"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    columns = {"instruction": "question", "input": "context", "output": "answer", "system": "sys"}
    (conv,) = load_conversations(path, columns=columns)
    assert conv.messages == [
        Message("system", "简洁"),
        Message("user", "翻译\nhello"),
        Message("assistant", "你好"),
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"question": "q", "context": "c"}])
    message = error_of(load_conversations, bad, columns=columns)
    assert message.startswith(f"{bad}:2: field 'answer': got a null")  # the user's own field name


def test_conversation_keys_and_role_names_as_tags(tmp_path):
    row = {
        "dialog": [
            {"speaker": "customer", "text": "退货怎么办？"},
            {"speaker": "agent", "text": "请提供订单号。"},
        ],
        "functions": [STOCK],
    }
    columns = {
        "messages": "dialog",
        "tools": "functions",
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "customer",
        "assistant_tag": "agent",
    }
    (conv,) = load_conversations(write_jsonl(tmp_path / "d.jsonl", [row]), columns=columns)
    assert conv.messages == [Message("user", "退货怎么办？"), Message("assistant", "请提供订单号。")]
    assert conv.tools == [STOCK]


def test_data_columns_reach_every_sft_split(tmp_path):
    rows = [{"q": f"问题{i}", "a": f"回答{i}"} for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "新问题", "a": "新回答"}])
    cfg = DataConfig(train_file=str(train), test_file=str(test), columns={"prompt": "q", "completion": "a"})
    data = load_sft(cfg)
    assert len(data.train) + len(data.validation) == 10 and data.test[0].messages[0].content == "新问题"


def test_classification_text_and_label_columns(tmp_path):
    rows = [
        {"review": f"好评{i}" if i % 2 else f"差评{i}", "stars": "5" if i % 2 else "1"} for i in range(20)
    ]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    data = load_classification(DataConfig(train_file=str(path), columns={"text": "review", "label": "stars"}))
    assert data.labels == ["1", "5"] and len(data.train) + len(data.validation) + len(data.test) == 20
    message = error_of(load_classification, DataConfig(train_file=str(path), columns={"text": "body"}))
    assert "missing column 'body'" in message


def test_data_columns_are_checked_in_the_config():
    message = error_of(DataConfig, dataset="x", columns={"intruction": "q"})
    assert "field 'data.columns': unknown key 'intruction'" in message and "'instruction'" in message
    message = error_of(DataConfig, dataset="x", columns={"text": "a"}, text_column="b")
    assert "data.columns.text is 'a' but data.text_column is 'b'" in message
    assert "unknown encoding 'gbk2'" in error_of(DataConfig, dataset="x", encoding="gbk2")
