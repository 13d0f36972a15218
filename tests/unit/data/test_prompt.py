"""Prompt classification (PET-style): encoding, demonstrations, and label-word scoring against a manual reference."""

from __future__ import annotations

import pytest
import torch

from glmtune.core import config
from glmtune.core.errors import UserError
from glmtune.data.classification import Example
from glmtune.data.prompt import Prompt, encode_prompt_examples, pick_demonstrations
from glmtune.models.verbalizer import PromptClassifier

TEMPLATE = "这个{text}。真"
TEXTS = ["质量很好", "物流非常慢，有点失望", "服务"]


@pytest.fixture(scope="module")
def lm_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def make_prompt(words: dict[str, list[str]], demonstrations=()) -> Prompt:
    cfg = config.PromptConfig(template=TEMPLATE, verbalizer=words)
    return Prompt(TEMPLATE, [cfg.words(label) for label in words], list(demonstrations), "\n\n")


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def manual_word_logp(model, prompt_ids: list[int], word_ids: list[int]) -> float:
    """log p(word | prompt): one unpadded forward pass, log-softmax at each position, summed over the word."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + word_ids])).logits[0]  # [seq, vocab]
    logp = torch.log_softmax(logits.double(), dim=-1)
    n = len(prompt_ids)
    return sum(logp[n - 1 + j, token].item() for j, token in enumerate(word_ids))


@pytest.mark.parametrize(
    "words",
    [
        {"neg": ["差"], "pos": ["好"]},  # one token per label: the single-pass path
        {"neg": ["失望", "差"], "pos": ["好", "喜欢"]},  # several words, several tokens each
    ],
)
def test_label_scores_equal_a_manual_log_softmax(lm_and_tokenizer, words):
    model, tokenizer = lm_and_tokenizer
    prompt = make_prompt(words)
    rows, _ = prompt.encode(tokenizer, TEXTS, max_seq_len=64)
    classifier = PromptClassifier(model, prompt.candidates(tokenizer), tokenizer.pad_token_id).eval()
    ids, mask = right_padded(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        scores = classifier(ids, mask)  # [texts, labels]

    for row, prompt_ids in enumerate(rows):
        for label, label_words in enumerate(words.values()):
            per_word = [
                manual_word_logp(model, prompt_ids, tokenizer(w, add_special_tokens=False)["input_ids"])
                for w in label_words
            ]
            expected = torch.logsumexp(torch.tensor(per_word), dim=0).item()
            assert scores[row, label].item() == pytest.approx(expected, abs=1e-4)


def test_single_and_multi_token_paths_agree(lm_and_tokenizer):
    model, tokenizer = lm_and_tokenizer
    prompt = make_prompt({"neg": ["差"], "pos": ["好"]})
    rows, _ = prompt.encode(tokenizer, TEXTS, max_seq_len=64)
    classifier = PromptClassifier(model, prompt.candidates(tokenizer), tokenizer.pad_token_id).eval()
    ids, mask = right_padded(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        fast = classifier.word_scores(ids, mask)
        slow = classifier._multi_token_scores(ids, mask.sum(-1) - 1)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_encoding_puts_text_in_the_template_and_cuts_only_the_text(lm_and_tokenizer):
    _, tokenizer = lm_and_tokenizer
    prompt = make_prompt({"neg": ["差"], "pos": ["好"]})
    rows, truncated = prompt.encode(tokenizer, ["很好", "质量" * 40], max_seq_len=20)
    assert truncated == 1 and len(rows[1]) == 20
    text = tokenizer.decode(rows[0], skip_special_tokens=False)
    assert text.replace(" ", "") == "<bos>这个很好。真"
    suffix = tokenizer("。真", add_special_tokens=False)["input_ids"]
    assert rows[1][-len(suffix) :] == suffix, "the answer cue survives truncation"


def test_demonstrations_are_seeded_balanced_and_precede_the_text(lm_and_tokenizer):
    _, tokenizer = lm_and_tokenizer
    train = [Example(f"{c}", i % 2, i, "f") for i, c in enumerate("好棒快赞差烂慢坏")]
    first, again = pick_demonstrations(train, 4, seed=1), pick_demonstrations(train, 4, seed=1)
    assert first == again and sorted(label for _, label in first) == [0, 0, 1, 1]
    prompt = make_prompt({"neg": ["差"], "pos": ["好"]}, first[:2])
    prompt.separator = "，"  # in the tiny character vocabulary
    expected = "".join(TEMPLATE.replace("{text}", t) + ("好" if y else "差") + "，" for t, y in first[:2])
    assert prompt.render("服务") == expected + TEMPLATE.replace("{text}", "服务")
    ids = encode_prompt_examples(tokenizer, [Example("服务", 0, 1, "f")], prompt, 64).input_ids[0]
    assert tokenizer.decode(ids).replace(" ", "") == "<bos>" + prompt.render("服务")


def test_prompt_config_and_verbalizer_errors(lm_and_tokenizer):
    _, tokenizer = lm_and_tokenizer
    with pytest.raises(UserError, match="prompt.template"):
        config.load(None, ["prompt.template=no text here", "prompt.verbalizer={a: b}"])
    with pytest.raises(UserError, match="prompt.verbalizer"):
        config.load(None, ["prompt.template=这{text}"])
    with pytest.raises(UserError, match="prompt.template"):
        config.load(None, ["task=sft", "prompt.template=这{text}", "prompt.verbalizer={a: b}"])
    cfg = config.load(None, ["prompt.template=这{text}", "prompt.verbalizer={pos: 好, neu: 一般}"])
    with pytest.raises(UserError, match=r"prompt.verbalizer.*\['neg'\]"):
        Prompt.build(cfg.prompt, ["neg", "pos"], [], seed=0)
    overrides = ["prompt.template=这{text}", "prompt.verbalizer={pos: 好, neg: 差}", "prompt.few_shot=3"]
    cfg = config.load(None, overrides)
    with pytest.raises(UserError, match="prompt.few_shot"):
        Prompt.build(cfg.prompt, ["neg", "pos"], [Example("a", 0, 1, "f")], seed=0)
    with pytest.raises(UserError, match="encode to no tokens"):
        Prompt(TEMPLATE, [["差"], [""]], [], "，").candidates(tokenizer)
