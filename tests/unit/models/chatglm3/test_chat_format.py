"""The chat/tool format: prompts equal build_chat_input, labels follow the official finetune demo, replies parse
without executing anything."""

import json

import pytest

from glmtune.models.chatglm3 import encode_conversation, encode_prompt, parse_reply, stop_ids
from glmtune.models.chatglm3.chat_format import CHATGLM3, format_tool_call, parse_tool_call
from tests.tiny import require_shared

IGNORE = -100
GMASK, SOP, SYSTEM, USER, ASSISTANT, OBSERVATION, EOS = 64790, 64792, 64794, 64795, 64796, 64797, 2


def test_stop_ids(tokenizer):
    assert stop_ids(tokenizer) == [EOS, USER, OBSERVATION]
    assert CHATGLM3.stop_tokens == ("</s>", "<|user|>", "<|observation|>")


def test_prompt_equals_build_chat_input(tokenizer):
    history = [
        {"role": "system", "content": "你是助手", "tools": [{"name": "get_weather", "parameters": {}}]},
        {"role": "user", "content": "北京天气"},
        {"role": "assistant", "metadata": "get_weather", "content": format_tool_call({"city": "北京"})},
        {"role": "observation", "content": '{"temperature": 20}'},
    ]
    expected = tokenizer.build_chat_input("谢谢", history)["input_ids"][0].tolist()
    assert encode_prompt(tokenizer, [*history, {"role": "user", "content": "谢谢"}]) == expected


def test_tools_system_prompt_matches_golden(tokenizer):
    """`tools=` adds the official tool system prompt: the same 284 ids as chatglm.cpp's function-call case."""
    case = next(
        c
        for c in json.loads(require_shared("golden", "expected_ids.json").read_text())["cases"]
        if c["name"] == "system_with_tools_prompt"
    )
    system_text = require_shared("golden", "function_call.txt").read_text()
    prompt, tools_json = system_text.split("\n", 1)
    assert prompt == CHATGLM3.tool_system_prompt
    ids = encode_prompt(tokenizer, [{"role": "user", "content": case["query"]}], tools=json.loads(tools_json))
    assert ids == case["ids"]


def test_labels_learn_assistant_turns_the_token_after_them_and_eos(tokenizer):
    messages = [
        {"role": "system", "content": "简洁回答"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好👋"},
        {"role": "user", "content": "再见"},
        {"role": "assistant", "content": "再见！"},
    ]
    input_ids, labels = encode_conversation(tokenizer, messages)
    system, user1, answer1, user2, answer2 = (
        tokenizer.build_single_message(m["role"], "", m["content"]) for m in messages
    )
    assert input_ids == [GMASK, SOP, *system, *user1, *answer1, *user2, *answer2, EOS]
    expected = (
        [IGNORE] * (2 + len(system) + len(user1))
        + [IGNORE]  # <|assistant|> itself follows a user turn: not learned
        + answer1[1:]  # "▁", "\n", the answer
        + [USER]  # the role token that ends the turn
        + [IGNORE] * (len(user2) - 1)
        + [IGNORE]
        + answer2[1:]
        + [EOS]
    )
    assert labels == expected
    assert len(labels) == len(input_ids)


def test_tool_call_turns(tokenizer):
    """The finetune demo's tool record: a learned call, then the observation (not learned); the model learns to
    end a call with <|observation|>."""
    tools = [{"name": "random_number_generator", "params": []}]
    record = [
        {"role": "user", "content": "生成一个随机数"},
        {
            "role": "tool",
            "name": "random_number_generator",
            "parameters": {"seed": 42, "range": (0, 10)},
            "observation": {"value": 7},
        },
        {"role": "assistant", "content": "随机数是 7"},
    ]
    input_ids, labels = encode_conversation(tokenizer, record, tools=tools)
    call = tokenizer.build_single_message(
        "assistant", "random_number_generator", "```python\ntool_call(seed=42, range=(0, 10))\n```"
    )
    observation = tokenizer.build_single_message("observation", "", '{"value": 7}')
    start = input_ids.index(ASSISTANT)
    assert input_ids[start : start + len(call)] == call
    assert input_ids[start + len(call) : start + len(call) + len(observation)] == observation
    assert labels[start] == IGNORE and labels[start + 1 : start + len(call)] == call[1:]
    assert labels[start + len(call)] == OBSERVATION  # the stop token after a call is learned
    assert set(labels[start + len(call) + 1 : start + len(call) + len(observation)]) == {IGNORE}
    assert labels[-1] == EOS
    # The same turn from a message with a tool_call, or an OpenAI-style tool_calls list with JSON arguments.
    for assistant in (
        {"role": "assistant", "tool_call": {"name": "random_number_generator", "parameters": {"seed": 42}}},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "random_number_generator", "arguments": '{"seed": 42}'}}],
        },
    ):
        ids, _ = encode_conversation(tokenizer, [record[0], assistant], tools=tools)
        expected = tokenizer.build_single_message(
            "assistant", "random_number_generator", "```python\ntool_call(seed=42)\n```"
        )
        assert ids[-1 - len(expected) : -1] == expected


def test_tool_call_rendering_is_the_official_format(tokenizer):
    """ARCHITECTURE.md section 5: metadata = tool name, content = ```python\\ntool_call(...)\\n```."""
    content = format_tool_call({"seed": 42, "range": [0, 10], "city": "北京", "flag": True, "note": None})
    assert content == ("```python\ntool_call(seed=42, range=[0, 10], city='北京', flag=True, note=None)\n```")
    turn = tokenizer.build_single_message("assistant", "random_number_generator", content)
    sp = tokenizer.sp_model
    assert turn == [ASSISTANT] + sp.encode("random_number_generator\n") + sp.encode(content)
    # decoding shows the content's own SentencePiece dummy-prefix space after the metadata line
    assert tokenizer.decode(turn) == "<|assistant|>random_number_generator\n " + content


def test_loss_false_and_truncation(tokenizer):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "loss": False},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    input_ids, labels = encode_conversation(tokenizer, messages)
    first_turn_end = input_ids.index(USER, 3)
    assert set(labels[: first_turn_end + 1]) == {IGNORE}
    short_ids, short_labels = encode_conversation(tokenizer, messages, max_len=7)
    assert short_ids == input_ids[:7] and short_labels == labels[:7]


def test_bad_messages_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="unknown role"):
        encode_conversation(tokenizer, [{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="either content or tool calls"):
        encode_conversation(
            tokenizer, [{"role": "assistant", "content": "x", "tool_call": {"name": "f", "parameters": {}}}]
        )


def test_parse_reply_text_and_tool_calls(tokenizer):
    # What generate returns after the prompt's <|assistant|>, decoded.
    reply_ids = tokenizer.build_single_message("assistant", "", "你好👋！我是人工智能助手。")[1:]
    assert parse_reply(tokenizer.decode(reply_ids)) == {"content": "你好👋！我是人工智能助手。"}
    call_ids = tokenizer.build_single_message(
        "assistant", "random_number_generator", format_tool_call({"seed": 42, "range": (0, 10)})
    )[1:]
    assert parse_reply(tokenizer.decode(call_ids)) == {
        "name": "random_number_generator",
        "parameters": {"seed": 42, "range": (0, 10)},
    }
    # Several turns in one reply: the last one counts, as in the official process_response.
    assert parse_reply("\n想一想<|assistant|>get_weather\n```python\ntool_call(city='北京')\n```") == {
        "name": "get_weather",
        "parameters": {"city": "北京"},
    }
    code = "```python\nprint(1 + 1)\n```"
    assert parse_reply("interpreter\n" + code) == {"name": "interpreter", "content": code}


def test_parse_reply_never_executes(tmp_path):
    canary = tmp_path / "pwned"
    attacks = [
        f"```python\n__import__('os').system('touch {canary}')\n```",
        f"```python\ntool_call(x=__import__('os').system('touch {canary}'))\n```",
        f"```python\ntool_call(**{{'x': open('{canary}', 'w')}})\n```",
        f"```python\ntool_call(x=(lambda: open('{canary}', 'w'))())\n```",
        f"```python\nexec(\"open('{canary}', 'w')\")\n```",
        "```python\ntool_call(x=9**9**9)\n```",
        "```python\ntool_call(x=[" * 200 + "]" * 200 + ")\n```",
    ]
    for attack in attacks:
        assert parse_tool_call(attack) is None
        assert "parameters" not in parse_reply("tool\n" + attack)
    assert not canary.exists()
