"""The native tokenizer gives the official ids: chatglm.cpp's expectations, and diffusers' port on random text."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from glmtune.models.chatglm3 import ChatGLM3Tokenizer
from glmtune.models.chatglm3.tokenizer import SPECIAL_TOKENS
from tests.tiny import SHARED, SHARED_REASON, require_shared

OFFICIAL_SPECIAL_IDS = {
    "[MASK]": 64789,
    "[gMASK]": 64790,
    "[sMASK]": 64791,
    "sop": 64792,
    "eop": 64793,
    "<|system|>": 64794,
    "<|user|>": 64795,
    "<|assistant|>": 64796,
    "<|observation|>": 64797,
}


def _expected_cases() -> list:
    path = SHARED / "golden" / "expected_ids.json"
    if not path.exists():
        return [pytest.param({"name": "absent"}, marks=pytest.mark.skip(reason=SHARED_REASON))]
    return json.loads(path.read_text())["cases"]


def _history(case: dict) -> list[dict]:
    history = []
    for item in case["history"]:
        item = dict(item)
        if "content_file" in item:
            item["content"] = require_shared("golden", item.pop("content_file")).read_text()
        history.append(item)
    return history


@pytest.mark.parametrize("case", _expected_cases(), ids=lambda case: case["name"])
def test_expected_ids(tokenizer, case):
    if case["call"] == "encode":
        ids = tokenizer.encode(case["text"])
    else:
        ids = tokenizer.build_chat_input(case["query"], _history(case))["input_ids"][0].tolist()
    assert ids == case["ids"]


def test_expected_ids_present():
    require_shared("golden", "expected_ids.json")
    assert len(_expected_cases()) == 5


def test_special_tokens_and_vocab(tokenizer):
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS} == OFFICIAL_SPECIAL_IDS
    assert {token: tokenizer.get_command(token) for token in SPECIAL_TOKENS} == OFFICIAL_SPECIAL_IDS
    assert tokenizer.vocab_size == len(tokenizer) == 64798
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<unk>", 0)
    assert tokenizer.padding_side == "left"
    assert tokenizer.get_command("<eos>") == 2 and tokenizer.get_command("<pad>") == 0
    assert tokenizer.encode("你好") == [64790, 64792, 36474, 54591]
    assert tokenizer.encode("你好", add_special_tokens=False) == [36474, 54591]


def test_literal_special_text_stays_text(tokenizer):
    """By default raw text never becomes control tokens (prompt injection, "isopropyl" containing "sop")."""
    text = "<|user|> </s> isopropyl sop [gMASK]"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert not set(ids) & (set(OFFICIAL_SPECIAL_IDS.values()) | {2})
    assert ids == tokenizer.sp_model.encode(text)
    official_option = ChatGLM3Tokenizer(vocab_file=tokenizer.vocab_file, encode_special_tokens=True)
    pieces = official_option.tokenize("<|user|>\n 你好<|assistant|>")
    assert pieces[0] == "<|user|>" and pieces[-1] == "<|assistant|>"
    assert official_option.encode(
        "<|user|>\n 你好", add_special_tokens=False
    ) == tokenizer.build_single_message("user", "", "你好")


def _random_text(rng: random.Random) -> str:
    alphabet = (
        list("abcXYZ019 _-.,;:!?'\"()[]{}<>|/\\#@$%^&*+=~`")
        + list("你好世界中文分词模型训练时间，。！？、：；「」")
        + ["\n", "\t", "  ", "\r\n", "😀", "👋", "é", "ß", "ｆ", "①", "…", "\u200b"]
        + ["<|user|>", "<|assistant|>", "sop", "[gMASK]", "</s>", "<unk>", "def ", "print(", "'''"]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def test_random_text_agrees_with_diffusers(tokenizer):
    """diffusers ships the official tokenizer; its build_chat_input calls batch_encode_plus (removed in
    transformers 5), so chat turns are compared through build_single_message."""
    kolors = pytest.importorskip("diffusers.pipelines.kolors.tokenizer")
    reference = kolors.ChatGLMTokenizer(str(require_shared("tokenizer.model")))
    rng = random.Random(0)
    for _ in range(300):
        text, metadata = _random_text(rng), rng.choice(["", "get_weather", " tool x "])
        role = rng.choice(["system", "user", "assistant", "observation"])
        assert tokenizer.encode(text) == reference.encode(text), text
        assert tokenizer.build_single_message(role, metadata, text) == reference.build_single_message(
            role, metadata, text
        )
        ids = reference.encode(text)
        assert tokenizer.decode(ids) == reference.tokenizer.decode(ids)  # official SPTokenizer.decode


def test_decode_round_trip(tokenizer):
    rng = random.Random(1)
    for _ in range(200):
        text = _random_text(rng)
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.decode(ids) == "[gMASK]sop" + text
    # unk/pad, bos, eos and padded-vocab ids decode to nothing; specials by name between SentencePiece runs
    ids = [0, 0, 64795, 30910, 13, 36474, 54591, 64796, 2, 65000]
    # each run is decoded on its own, so "▁\n▁你好" keeps the space of the content's dummy prefix
    assert tokenizer.decode(ids) == "<|user|>\n 你好<|assistant|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "\n 你好"
    assert tokenizer.decode(torch.tensor(ids)) == tokenizer.decode(ids)


def test_left_padding_pads_position_ids_with_zero(tokenizer):
    batch = tokenizer(["你好", "今天天气不错啊"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "position_ids"}
    short = len(tokenizer.encode("你好"))
    long = batch["input_ids"].shape[1]
    pad = long - short
    assert batch["input_ids"][0, :pad].tolist() == [0] * pad
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * short
    assert batch["position_ids"][0].tolist() == [0] * pad + list(range(short))
    assert batch["position_ids"][1].tolist() == list(range(long))
    padded = tokenizer.pad({"input_ids": [[5, 6], [5, 6, 7, 8]]}, padding="max_length", max_length=5)
    assert padded["input_ids"] == [[0, 0, 0, 5, 6], [0, 5, 6, 7, 8]]
    assert padded["position_ids"] == [[0, 0, 0, 0, 1], [0, 0, 1, 2, 3]]
    right = tokenizer.pad({"input_ids": [[5, 6], [5, 6, 7]]}, padding=True, padding_side="right")
    assert right["input_ids"] == [[5, 6, 0], [5, 6, 7]] and right["attention_mask"][0] == [1, 1, 0]


def test_build_chat_input_is_a_batch_of_one(tokenizer):
    history = [{"role": "system", "content": "be brief", "tools": [{"name": "f"}]}]
    encoded = tokenizer.build_chat_input("hi", history=history, role="user")
    ids = encoded["input_ids"]
    assert isinstance(ids, torch.Tensor) and ids.shape[0] == 1
    assert encoded["position_ids"][0].tolist() == list(range(ids.shape[1]))
    assert ids[0, :3].tolist() == [64790, 64792, 64794] and ids[0, -1].item() == 64796
    system = tokenizer.build_single_message("system", "", 'be brief\n[\n    {\n        "name": "f"\n    }\n]')
    assert ids[0, 2 : 2 + len(system)].tolist() == system
    with pytest.raises(ValueError, match="role"):
        tokenizer.build_single_message("robot", "", "x")


def test_apply_chat_template_uses_the_chat_format(tokenizer):
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好👋"},
        {"role": "user", "content": "再见"},
    ]
    expected = tokenizer.build_chat_input("再见", messages[:2])["input_ids"][0].tolist()
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == expected
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert encoded["input_ids"] == expected and encoded["position_ids"] == list(range(len(expected)))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "[gMASK]sop<|user|>\n 你好<|assistant|>\n 你好👋<|user|>\n 再见<|assistant|>"
    batch = tokenizer.apply_chat_template(
        [messages[:1], messages], add_generation_prompt=True, return_tensors="pt"
    )
    assert batch["input_ids"].shape == (2, len(expected)) and batch["attention_mask"][0, 0] == 0


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == require_shared("tokenizer.model").read_bytes()
    text = "晚上睡不着应该怎么办 <|user|> sop"
    for reloaded in (ChatGLM3Tokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert isinstance(reloaded, ChatGLM3Tokenizer)
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.padding_side == "left" and reloaded.eos_token_id == 2 and reloaded.pad_token_id == 0


def test_official_folder_loads_directly_and_through_auto(tokenizer):
    folder = require_shared("tokenizer_config.json").parent
    text = "你好 isopropyl <|user|>\tdef f(): pass"
    for loaded in (ChatGLM3Tokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)):
        assert isinstance(loaded, ChatGLM3Tokenizer)
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.padding_side == "left"


def test_hf_main_splitting_is_opt_in(tokenizer):
    """split_special_tokens=False reproduces HF main's tokenizer: the four tokens its tokenizer_config registers,
    and "</s>", are cut out of raw text (even inside words)."""
    folder = require_shared("tokenizer_config.json").parent
    hf_main = ChatGLM3Tokenizer.from_pretrained(folder, split_special_tokens=False)
    ids = hf_main.encode("isopropyl<|user|>x</s>", add_special_tokens=False)
    assert OFFICIAL_SPECIAL_IDS["sop"] in ids and OFFICIAL_SPECIAL_IDS["<|user|>"] in ids and 2 in ids
    assert tokenizer.encode("isopropyl<|user|>x</s>", add_special_tokens=False) == tokenizer.sp_model.encode(
        "isopropyl<|user|>x</s>"
    )
