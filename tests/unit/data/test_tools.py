"""Tools are never dropped silently: a conversation with tool schemas, calls or results and a template that
cannot render them is an error at its file and line naming the templates that can; ``template: auto`` uses the
tokenizer's own template only when it renders them."""

from __future__ import annotations

import pytest

from glmtune.core.errors import UserError
from glmtune.data.conversation import load_conversations
from glmtune.data.templates import encode_conversations, encode_prompt, resolve_template
from glmtune.data.templates.resolve import tool_templates
from tests.helpers import CHATML, bpe_tokenizer, tool_rows, write_jsonl
from tests.unit.data.test_templates import QWEN25


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def plain_chatml():
    """A ChatML tokenizer whose own Jinja template knows nothing of tools (it would drop them)."""
    return bpe_tokenizer("chatml", CHATML)


@pytest.fixture
def mixed_file(tmp_path):
    """A plain conversation on line 1, one with tools on line 2."""
    plain = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}
    return write_jsonl(tmp_path / "tools.jsonl", [plain, tool_rows()[0]])


def test_auto_with_a_template_that_drops_tools_is_an_error_at_the_line(plain_chatml, mixed_file):
    assert not resolve_template(plain_chatml, "auto").renders_tools
    conversations = load_conversations(mixed_file)
    message = error_of(encode_conversations, plain_chatml, conversations, "auto", max_seq_len=512)
    assert message.startswith(f"{mixed_file}:2: field 'template': the conversation has tools")
    assert "template 'auto' (the tokenizer's own chat template) cannot render" in message
    assert "expected a template that renders tools: chatml" in message
    # without the tools line, the same tokenizer encodes as before
    assert len(encode_conversations(plain_chatml, conversations[:1], "auto", max_seq_len=512).examples) == 1


def test_a_named_template_without_tools_is_an_error_at_the_line(mixed_file):
    tokenizer = bpe_tokenizer("plain", None)
    message = error_of(
        encode_conversations, tokenizer, load_conversations(mixed_file), "plain", max_seq_len=512
    )
    assert message.startswith(f"{mixed_file}:2: field 'template':")
    assert "template 'plain' cannot render" in message
    assert "no template renders them with this tokenizer" in message  # it has no ChatML tokens


def test_a_template_that_renders_tools_is_used(mixed_file):
    tokenizer = bpe_tokenizer("chatml", QWEN25)
    assert resolve_template(tokenizer, "auto").renders_tools
    assert tool_templates(tokenizer) == ["auto", "chatml"]
    encoded = encode_conversations(tokenizer, load_conversations(mixed_file), "auto", max_seq_len=4096)
    assert len(encoded.examples) == 2
    assert "get_weather" in tokenizer.decode(encoded.examples[1].input_ids)


def test_a_prompt_with_tools_is_refused_too(plain_chatml, mixed_file):
    conv = load_conversations(mixed_file)[1]
    message = error_of(encode_prompt, plain_chatml, conv.messages[:2], "auto", conv.tools)
    assert "cannot render" in message and "chatml" in message
