"""What other code needs to know about a model is a capability the model, its tokenizer or its chat format
declares, never a test of its name: chat formats (``parses_tool_calls``, ``reply_text``, the tokenizer's
``chat_format()`` hook), how an export loads back (``native_import`` on the config class), the boolean
``logits_to_keep`` (``boolean_logits_to_keep`` on the model class). And the rule that keeps it so: outside
``models/chatglm3`` the source names ChatGLM only where the chat format is registered and in the config's
list of template names."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.data.templates import (
    ChatFormat,
    TokenizerChatFormat,
    encode_conversation,
    encode_prompt,
    resolve_template,
    stop_ids,
)
from tests.helpers import CHATML, REPO, SINGLE, bpe_tokenizer
from tests.tiny import require_shared, unseeded_chatglm3, unseeded_llama

SRC = REPO / "src" / "glmtune"


@pytest.fixture(scope="module")
def chatglm3_tokenizer():
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))


@pytest.fixture(scope="module")
def chatml_tokenizer():
    return bpe_tokenizer("chatml", CHATML)


# --------------------------------------------------------------------------- chat formats


def test_the_chatglm3_format_declares_tool_calls_and_text_templates_do_not(
    chatglm3_tokenizer, chatml_tokenizer
):
    provided = chatglm3_tokenizer.chat_format()  # the hook the template registry looks for
    assert isinstance(provided, TokenizerChatFormat) and provided.parses_tool_calls
    for template in ("chatglm3", "auto"):
        fmt = resolve_template(chatglm3_tokenizer, template)
        assert isinstance(fmt, ChatFormat)
        assert fmt.name == "chatglm3" and fmt.parses_tool_calls
        assert fmt.reply_text("\n好的") == "好的"  # a plain reply's empty metadata line is not the answer
        assert fmt.parse_reply("get_weather\n```python\ntool_call(city='北京')\n```") == {
            "name": "get_weather",
            "parameters": {"city": "北京"},
        }
    for template in ("chatml", "auto"):
        fmt = resolve_template(chatml_tokenizer, template)
        assert isinstance(fmt, ChatFormat) and not fmt.parses_tool_calls
        assert fmt.reply_text("\nHi") == "\nHi"
        assert fmt.parse_reply("tool_call(city='x')") == {"content": "tool_call(city='x')"}
    assert not hasattr(chatml_tokenizer, "chat_format")  # nothing declared: no tokenizer-provided format


class _ToyFormat:
    """A chat format some tokenizer provides: one id per character, every assistant character learned."""

    name = "toy"
    parses_tool_calls = False

    def encode_conversation(self, messages, tools=None):
        ids, labels = [], []
        for message in messages:
            if message["role"] == "system":
                raise ValueError("toy conversations have no system turn")
            text = [ord(c) for c in message["content"]]
            ids += text
            labels += text if message["role"] == "assistant" else [-100] * len(text)
        return ids, labels

    def encode_prompt(self, messages, tools=None):
        return [ord(c) for m in messages for c in m["content"]] + [0]

    def stop_ids(self):
        return [0]

    def parse_reply(self, text):
        return {"content": text}

    def reply_text(self, text):
        return text.strip()


class _ToyTokenizer:
    chat_template = None

    def chat_format(self):
        return _ToyFormat()


def test_any_tokenizer_can_provide_its_format_through_the_hook():
    """The registry knows no model: ``auto`` picks up whatever format a tokenizer declares."""
    tokenizer = _ToyTokenizer()
    assert isinstance(tokenizer.chat_format(), TokenizerChatFormat)
    fmt = resolve_template(tokenizer, "auto")
    assert isinstance(fmt, ChatFormat) and fmt.name == "toy" and not fmt.parses_tool_calls
    encoded = encode_conversation(tokenizer, SINGLE, "auto", max_seq_len=4096)
    question, answer = (m.content for m in SINGLE.messages)
    assert encoded.input_ids == [ord(c) for c in question + answer]
    assert encoded.labels == [-100] * len(question) + [ord(c) for c in answer]
    prompt = Conversation([Message("user", "hi")])
    assert encode_prompt(tokenizer, prompt) == [ord("h"), ord("i"), 0]
    assert stop_ids(tokenizer) == [0] and fmt.reply_text(" a ") == "a"
    with_system = Conversation([Message("system", "s"), *SINGLE.messages])
    with pytest.raises(UserError, match="no system turn"):
        encode_conversation(tokenizer, with_system, max_seq_len=64)
    with pytest.raises(UserError, match="needs ChatGLM3's own tokenizer"):  # declared, but another format
        resolve_template(tokenizer, "chatglm3")


# --------------------------------------------------------------------------- models


def test_export_notes_follow_the_model_declaration(chatglm3_tokenizer, chatml_tokenizer):
    from glmtune.core import config as config_mod
    from glmtune.infer.export import Native, _notes, native_class
    from glmtune.infer.export.readme import readme

    chatglm3, llama = unseeded_chatglm3(), unseeded_llama()
    native = native_class(chatglm3, chatglm3_tokenizer)
    assert native == Native("ChatGLM3", "glmtune.models.chatglm3", chat_format_in_tokenizer=True)
    assert native_class(llama, chatml_tokenizer) is None
    # A native class whose tokenizer has a Jinja template instead: the README says nothing of the chat format.
    assert not native_class(chatglm3, chatml_tokenizer).chat_format_in_tokenizer

    cfg = config_mod.from_dict(
        {"task": "sft", "model": {"name_or_path": "m"}, "data": {"train_file": "t.jsonl"}}
    )
    native_notes = _notes(cfg, native, Path("run"), int8=False)
    plain_notes = _notes(cfg, None, Path("run"), int8=False)
    assert native_notes["loads_with"] == (
        "glmtune's native ChatGLM3: import glmtune.models.chatglm3, then transformers Auto classes"
    )
    assert (
        plain_notes["loads_with"]
        == "transformers.AutoModelForCausalLM.from_pretrained(DIR) (no glmtune needed)"
    )
    assert set(native_notes) == set(plain_notes)  # the same export.json keys either way
    native_readme, plain_readme = readme(native_notes, None, native), readme(plain_notes, None)
    assert "import glmtune.models.chatglm3  # registers ChatGLM3 with the Auto classes" in native_readme
    assert (
        "ChatGLM3's chat format lives in glmtune's tokenizer class (no Jinja chat template)" in native_readme
    )
    assert "no glmtune import needed" in plain_readme and "glmtune.models" not in plain_readme
    # int8 exports load through glmtune whatever the class: no import line
    int8_notes = _notes(cfg, native, Path("run"), int8=True)
    assert "import glmtune.models" not in readme(int8_notes, None, native)


def test_boolean_logits_to_keep_is_declared_by_the_model_class():
    from torch import nn

    from glmtune.models.causal import CausalLM, accepts_learned_mask

    assert accepts_learned_mask(CausalLM(unseeded_chatglm3()))  # declared: boolean_logits_to_keep
    assert accepts_learned_mask(CausalLM(unseeded_llama()))  # transformers' own class

    class Undeclared(nn.Module):  # e.g. remote code: not assumed to know the boolean form
        def forward(self, input_ids=None, logits_to_keep=0):
            return input_ids

    assert not accepts_learned_mask(CausalLM(Undeclared()))


def test_native_model_packages_register_themselves():
    from transformers import CONFIG_MAPPING

    from glmtune.models.chatglm3 import ChatGLM3Config
    from glmtune.models.load import register_native_models

    register_native_models()
    assert CONFIG_MAPPING[ChatGLM3Config.model_type] is ChatGLM3Config
    assert ChatGLM3Config.native_import == "glmtune.models.chatglm3"


# --------------------------------------------------------------------------- the rule

# The one place that registers ChatGLM3's chat format with the template registry (a template name → the family).
ALLOWED_LINES = {("data/templates/registry.py", 'TOKENIZER_FORMATS = {"chatglm3": "ChatGLM3"}')}
ALLOWED_FOLDERS = (
    "models/chatglm3/",
    "core/config/",
)  # the model itself; the config's list of template names


def chatglm_in_code(source: str) -> list[tuple[int, str]]:
    """Where code (not prose) names ChatGLM: an identifier (``_is_chatglm3``, ``ChatGLM3Format``) or a lowercase
    ``chatglm`` in a string (``model_type == "chatglm"``, a module path, a format name). Product prose — a
    docstring, a comment or a message that says "ChatGLM3" to the user — is not special-casing and is allowed."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and "chatglm" in token.string.lower():
            found.append((token.start[0], token.line.strip()))
        elif token.type == tokenize.STRING and "chatglm" in token.string:
            found.append((token.start[0], token.line.strip()))
    return found


def test_the_grep_rule_catches_name_tests_but_not_prose():
    assert chatglm_in_code('if config.model_type == "chatglm":\n    pass\n')
    assert chatglm_in_code("def _is_chatglm3(model):\n    return 1\n")
    assert not chatglm_in_code('"""Loads a ChatGLM3 folder."""\nx = 1  # ChatGLM3 too\n')


def test_only_the_registration_names_chatglm_outside_its_package():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith(ALLOWED_FOLDERS):
            continue
        for number, line in chatglm_in_code(path.read_text(encoding="utf-8")):
            if (relative, line.split("#", 1)[0].strip()) not in ALLOWED_LINES:
                found.append(f"src/glmtune/{relative}:{number}: {line}")
    assert not found, "ChatGLM named outside models/chatglm3 (declare a capability instead):\n" + "\n".join(
        found
    )
