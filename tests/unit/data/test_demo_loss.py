"""The ChatGLM3 finetune demo's ``"loss": false`` on a turn: that assistant turn is context, not labels — in
ChatGLM3's own format (checked against its own encoding of the raw demo turns) and in every text template (the
same ids, exactly that turn's labels gone); one format for all splits, chosen knowing whether any has tools."""

from __future__ import annotations

import json

import pytest

from glmtune.core.errors import UserError
from glmtune.data.conversation import conversations_from_records, load_conversations
from glmtune.data.templates import IGNORE_INDEX, encode_conversation, encode_conversations, resolve_for
from tests.helpers import CHATML, bpe_tokenizer, tool_rows, write_jsonl
from tests.unit.data.test_formats import STOCK, SYSTEM
from tests.unit.data.test_templates import QWEN25

MARKED = {
    "conversations": [
        {"role": "system", "content": SYSTEM, "tools": [STOCK]},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！", "loss": False},
        {"role": "user", "content": "苹果的股价是多少？"},
        {
            "role": "tool",
            "name": "track",
            "parameters": {"symbol": "AAPL"},
            "observation": "190",
            "loss": False,
        },
        {"role": "assistant", "content": "190 美元。"},
    ]
}


def learned_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_loss_false_is_read_per_turn(tmp_path):
    (conv,) = load_conversations(write_jsonl(tmp_path / "demo.jsonl", [MARKED]))
    assert [(m.role, m.learn) for m in conv.messages] == [
        ("system", True),
        ("user", True),
        ("assistant", False),
        ("user", True),
        ("assistant", False),  # the demo's tool turn: its call is not learned, ...
        ("tool", True),
        ("assistant", True),
    ]


def test_chatglm3_format_honours_loss_false_as_chatglm3_does():
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer, chat_format
    from tests.tiny import require_shared

    tokenizer = ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))
    (conv,) = conversations_from_records([{**MARKED, "_line": 1}], "demo")
    expected = chat_format.encode_conversation(tokenizer, MARKED["conversations"])
    encoded = encode_conversation(tokenizer, conv, "chatglm3", max_seq_len=4096)
    assert (encoded.input_ids, encoded.labels) == expected
    learned = learned_text(tokenizer, encoded.input_ids, encoded.labels)
    assert "190 美元" in learned and "你好！" not in learned and "AAPL" not in learned


@pytest.mark.parametrize("template", ["auto", "chatml"])
def test_text_templates_leave_exactly_the_marked_turn_out(tmp_path, template):
    tokenizer = bpe_tokenizer("chatml", QWEN25)
    marked = {
        "messages": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！", "loss": False},
            {"role": "user", "content": "明天北京下雨吗"},
            {"role": "assistant", "content": "明天北京有雨。"},
        ]
    }
    plain = {"messages": [{k: v for k, v in m.items() if k != "loss"} for m in marked["messages"]]}
    (learn_all,) = load_conversations(write_jsonl(tmp_path / "a.jsonl", [plain]))
    (skip_one,) = load_conversations(write_jsonl(tmp_path / "b.jsonl", [marked]))
    full = encode_conversation(tokenizer, learn_all, template, max_seq_len=4096)
    part = encode_conversation(tokenizer, skip_one, template, max_seq_len=4096)
    assert part.input_ids == full.input_ids, "the turn stays in the ids as context"
    lost = [t for t, a, b in zip(full.input_ids, full.labels, part.labels) if a != b]
    assert all(a != IGNORE_INDEX and b == IGNORE_INDEX for a, b in zip(full.labels, part.labels) if a != b)
    assert tokenizer.decode(lost).startswith("你好！"), tokenizer.decode(lost)
    assert "明天北京有雨" in learned_text(tokenizer, part.input_ids, part.labels)


def test_a_conversation_with_nothing_to_learn_is_refused(tmp_path):
    row = {
        "conversations": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "loss": False},
        ]
    }
    with pytest.raises(UserError) as caught:
        load_conversations(write_jsonl(tmp_path / "x.jsonl", [row]))
    assert str(caught.value).startswith(f"{tmp_path / 'x.jsonl'}:1: field 'messages':")
    assert '"loss": false' in str(caught.value)
    bad = {
        "conversations": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "loss": "no"},
        ]
    }
    with pytest.raises(UserError, match=r"conversations\[1\]\.loss"):
        load_conversations(write_jsonl(tmp_path / "y.jsonl", [bad]))


# --------------------------------------------------------------------------- one format for every split


def test_tools_in_another_split_decide_the_format_of_all(tmp_path):
    """The validation split has no tools, the training split does: one format, chosen knowing the tools (a
    format that cannot render them is refused at the first conversation with them, whichever split)."""
    plain_rows = [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    ]
    validation = load_conversations(write_jsonl(tmp_path / "validation.jsonl", plain_rows))
    train = load_conversations(write_jsonl(tmp_path / "train.jsonl", plain_rows + tool_rows()[:1]))
    renders = bpe_tokenizer("chatml", QWEN25)
    fmt = resolve_for(renders, "auto", validation, train)
    assert fmt.renders_tools
    assert resolve_for(renders, fmt, validation) is fmt, "a resolved format is used as it is"
    encoded = encode_conversations(renders, validation, fmt, max_seq_len=4096)
    assert encoded.kept == (0,) and encoded.num_dropped == 0

    drops = bpe_tokenizer("chatml", CHATML)  # its own template knows nothing of tools
    with pytest.raises(UserError) as caught:
        resolve_for(drops, "auto", validation, train)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:2: field 'template':")
    assert "expected a template that renders tools: chatml" in message
    assert not resolve_for(drops, "auto", validation).renders_tools, "without tools, the same as before"


def test_dropped_conversations_are_told_apart_from_kept_ones(tmp_path):
    tokenizer = bpe_tokenizer("chatml", QWEN25)
    rows = [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]},
        {"messages": [{"role": "user", "content": "你好" * 200}, {"role": "assistant", "content": "好"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    conversations = load_conversations(write_jsonl(tmp_path / "c.jsonl", rows))
    encoded = encode_conversations(tokenizer, conversations, "auto", max_seq_len=64)
    assert encoded.kept == (0, 2) and encoded.num_dropped == 1 and len(encoded.examples) == 2
    assert json.dumps(encoded.kept) == "[0, 2]"
