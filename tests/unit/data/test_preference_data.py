"""Preference data: every format read to the same examples, SFT's templates and masks (only the final response
learned, its end-of-turn token kept when cut), and each bad input one UserError naming file, line and field."""

from __future__ import annotations

import pytest

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation
from glmtune.data.messages import Message
from glmtune.data.preference import collate_preference, encode_example, examples_from_records
from glmtune.data.templates import encode_conversation, resolve_template
from tests.helpers import CHATML, bpe_tokenizer

PROMPT = [{"role": "user", "content": "你好"}]


def _read(*records):
    return examples_from_records([{**r, "_line": i + 1} for i, r in enumerate(records)], "pairs.jsonl")


def test_trl_sharegpt_and_implicit_prompt_formats_read_alike():
    trl = _read({"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "好"}], "rejected": "坏"})[0]
    text = _read({"prompt": "你好", "chosen": "好", "rejected": {"role": "assistant", "content": "坏"}})[0]
    sharegpt = _read(
        {
            "conversations": [{"from": "human", "value": "你好"}],
            "chosen": {"from": "gpt", "value": "好"},
            "rejected": {"from": "gpt", "value": "坏"},
        }
    )[0]
    implicit = _read(
        {
            "chosen": PROMPT + [{"role": "assistant", "content": "好"}],
            "rejected": PROMPT + [{"role": "assistant", "content": "坏"}],
        }
    )[0]
    for example in (trl, text, sharegpt, implicit):
        assert example.prompt == [Message("user", "你好")]
        assert (example.chosen.content, example.rejected.content) == ("好", "坏")
    kto = _read({"messages": PROMPT, "completion": "好", "label": False})[0]
    assert kto.rejected is None and kto.desirable is False and kto.chosen.content == "好"


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({"prompt": "你好", "chosen": "好", "rejected": "好"}, "rejected", "equals the chosen"),
        ({"prompt": "你好", "chosen": "  ", "rejected": "坏"}, "chosen", "empty"),
        ({"prompt": "你好", "chosen": "好"}, "rejected", "missing"),
        ({"prompt": "你好", "completion": "好"}, "label", "KTO"),
        ({"prompt": "你好", "completion": "好", "label": "yes"}, "label", "true or false"),
        ({"prompt": "", "chosen": "好", "rejected": "坏"}, "prompt", "empty prompt"),
        (
            {"messages": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
            "messages[0].role",
            "role",
        ),
    ],
)
def test_bad_records_are_one_line_with_file_line_and_field(record, field, words):
    with pytest.raises(UserError) as caught:
        _read({"prompt": "好", "chosen": "a", "rejected": "b"}, record)
    error = caught.value
    assert (error.file, error.line, error.field) == ("pairs.jsonl", 2, field)
    assert words in str(error) and "\n" not in str(error)


def test_pairs_and_kto_examples_in_one_file_are_refused():
    with pytest.raises(UserError, match="one kind per file"):
        _read(
            {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "completion": "b", "label": True}
        )


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer("chatml", CHATML)


def test_encoding_shares_the_prompt_and_learns_what_sft_learns(tokenizer):
    multi = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "谢谢"},
    ]
    example = _read({"prompt": multi, "chosen": "不客气！", "rejected": "Hello"})[0]
    fmt = resolve_template(tokenizer, "auto")
    encoded = encode_example(tokenizer, fmt, example, 256)
    assert encoded.prompt == fmt.prompt(example.prompt, None)  # the generation prompt, shared
    for (ids, labels), reply in zip(encoded.responses, (example.chosen, example.rejected)):
        sft = encode_conversation(tokenizer, Conversation(example.prompt + [reply]), fmt, max_seq_len=256)
        assert encoded.prompt + ids == sft.input_ids
        # the final response only (SFT also learns the earlier "4"): SFT's labels from the response on
        assert labels == sft.labels[len(encoded.prompt) :]
    batch = collate_preference([(0, encoded)], tokenizer.pad_token_id, 256)
    assert batch["input_ids"].shape[0] == 2 and (batch["labels"][:, : len(encoded.prompt)] == -100).all()


def test_a_long_response_is_cut_before_its_end_of_turn_and_a_long_prompt_is_refused(tokenizer):
    fmt = resolve_template(tokenizer, "auto")
    example = _read({"prompt": "你好", "chosen": "今天天气很好。" * 20, "rejected": "不客气！"})[0]
    prompt_len = len(fmt.prompt(example.prompt, None))
    encoded = encode_example(tokenizer, fmt, example, prompt_len + 6)
    ids, labels = encoded.responses[0]
    assert encoded.truncated and len(encoded.prompt) + len(ids) <= prompt_len + 6
    end_of_turn = fmt.stop_ids()[0]
    assert end_of_turn in ids and labels[ids.index(end_of_turn)] == end_of_turn  # kept, and learned
    with pytest.raises(UserError) as caught:
        encode_example(tokenizer, fmt, example, prompt_len + 1)
    assert (caught.value.file, caught.value.line, caught.value.field) == ("pairs.jsonl", 1, "prompt")
    assert "no room" in str(caught.value)


def test_early_rounds_are_dropped_whole_to_fit(tokenizer):
    fmt = resolve_template(tokenizer, "auto")
    long_history = [{"role": "user", "content": "What is 2+2? " * 10}, {"role": "assistant", "content": "4"}]
    example = _read(
        {"prompt": long_history + [{"role": "user", "content": "谢谢"}], "chosen": "好", "rejected": "坏"}
    )[0]
    full = encode_example(tokenizer, fmt, example, 1024)
    short = encode_example(tokenizer, fmt, example, len(full.prompt) - 5)
    assert short.truncated and short.prompt == fmt.prompt([Message("user", "谢谢")], None)


def test_tool_calls_in_prompt_and_response_are_rendered_or_refused():
    """Tools travel as in SFT: a tool-call response is encoded with its call; a template that cannot render tools
    refuses the example at its file and line (never drops them)."""
    from glmtune.infer.lm import resolve_template as run_template
    from tests.helpers import CALL, TOOL
    from tests.unit.data.test_templates import QWEN25

    call = {"role": "assistant", "content": "", "tool_calls": [CALL]}
    record = {
        "prompt": [{"role": "user", "content": "北京天气？"}],
        "chosen": [call],
        "rejected": "我不知道。",
    }
    example = _read({**record, "tools": [TOOL]})[0]
    assert example.chosen.tool_calls and example.tools == [TOOL]
    tokenizer = bpe_tokenizer("chatml", QWEN25)
    fmt = run_template(tokenizer, "auto", [example.conversation()])
    ids, labels = encode_example(tokenizer, fmt, example, 4096).responses[0]
    assert "get_weather" in tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    with pytest.raises(UserError) as caught:
        run_template(bpe_tokenizer("chatml", CHATML), "auto", [example.conversation()])
    assert (caught.value.file, caught.value.line) == ("pairs.jsonl", 1) and "cannot render" in str(
        caught.value
    )


def test_builtin_pairs_are_the_corpus_reply_against_smollm2s_own_reply():
    """chatterbot-zh-pairs, checked against the corpus's YAML read here and the shipped replies file."""
    import json
    from importlib.util import find_spec
    from pathlib import Path

    import yaml

    from glmtune.data.builtin import BUILTIN_DATA, SMOLLM2_REPLIES, load_chatterbot_zh_pairs

    folder = Path(next(iter(find_spec("chatterbot_corpus").submodule_search_locations))) / "data" / "chinese"
    answers: dict[str, set[str]] = {}
    for path in folder.glob("*.yml"):
        for item in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            if len(item) in (2, 3):  # an unanswered third turn is dropped
                answers.setdefault(str(item[0]).strip(), set()).add(str(item[1]).strip())
    shipped = [json.loads(line) for line in (BUILTIN_DATA / SMOLLM2_REPLIES).read_text("utf-8").splitlines()]
    replies = {r["prompt"]: r["reply"] for r in shipped}
    assert len(replies) == len(shipped) == len(answers)  # one generated reply per distinct question
    pairs = load_chatterbot_zh_pairs()
    assert len(pairs) == 453
    for pair in pairs:
        assert pair["chosen"] in answers[pair["prompt"]] and pair["rejected"] == replies[pair["prompt"]]
        assert pair["rejected"] and pair["rejected"] != pair["chosen"]
    examples = examples_from_records(pairs, "chatterbot-zh-pairs")
    assert [e.rejected.content for e in examples] == [p["rejected"] for p in pairs]
