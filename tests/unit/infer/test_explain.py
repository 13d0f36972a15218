"""infer.explain and infer.pieces: integrated-gradients attributions obey completeness, reply log-probabilities
equal an independent log_softmax (and the eval loss), tokens show as the text they add and group into words."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.infer import explain, lm
from glmtune.infer.classifier import LoadedRun
from glmtune.infer.pieces import token_pieces, word_groups
from glmtune.models.heads import SequenceClassifier
from tests.tiny import sentiment_tokenizer, tiny_body, tiny_llama_config

TEXT = "这个东西质量很好，非常推荐"
LABELS = ["neg", "pos", "mid"]


@pytest.fixture(scope="module")
def loaded() -> LoadedRun:
    """A tiny random Llama classifier with a random (not zero) head, so logits and attributions are not zero."""
    tokenizer = sentiment_tokenizer()
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=256,
    )
    classifier = SequenceClassifier(tiny_body(config), len(LABELS)).eval()
    torch.manual_seed(1)
    torch.nn.init.normal_(classifier.head.weight)
    cfg = SimpleNamespace(train=SimpleNamespace(max_seq_len=64), eval=SimpleNamespace(batch_size=32))
    return LoadedRun(None, cfg, classifier, tokenizer, LABELS)  # type: ignore[arg-type]


def logit(loaded: LoadedRun, ids: list[int], target: int) -> float:
    """The classifier's logit for ``target`` on ``ids``, straight from its forward (the reference)."""
    with torch.no_grad():
        batch = torch.tensor([ids])  # [1, seq]
        return float(loaded.classifier(batch, torch.ones_like(batch))[0, target])


def test_attributions_are_complete(loaded):
    """Completeness: the attributions add up to logit(input) − logit(baseline) within 1e-4 of the gap at 128
    steps, and the reported delta is exactly that gap's remainder."""
    result = explain.explain_label(loaded, TEXT, steps=128)
    ids = loaded.tokenizer(TEXT)["input_ids"]
    assert result.ids == ids and len(result.values) == len(ids)
    target = LABELS.index(result.summary["label"])
    baseline = [i if i in loaded.tokenizer.all_special_ids else loaded.tokenizer.pad_token_id for i in ids]
    assert baseline[0] == loaded.tokenizer.bos_token_id and set(baseline[1:]) == {
        loaded.tokenizer.pad_token_id
    }
    gap = logit(loaded, ids, target) - logit(loaded, baseline, target)
    assert abs(gap) > 1.0, "a gap worth explaining"
    total = sum(result.values)
    assert total == pytest.approx(gap, rel=1e-4, abs=1e-4)
    assert result.summary["delta"] == pytest.approx(total - gap, abs=1e-4)
    assert result.summary["label"] == result.summary["predicted"], "default: the predicted label"
    assert result.values[0] == 0.0, "a special token equals its baseline: no attribution"


def test_more_steps_converge(loaded, caplog):
    few = explain.explain_label(loaded, TEXT, steps=8).summary["delta"]
    assert "raise --steps (now 8)" in caplog.text, "a delta of 60% of the gap is flagged"
    caplog.clear()
    many = explain.explain_label(loaded, TEXT, steps=64).summary["delta"]
    assert abs(many) < abs(few) / 10 and not caplog.text


def test_a_chosen_label(loaded):
    result = explain.explain_label(loaded, TEXT, "mid", steps=32)
    assert result.summary["label"] == "mid"
    gap = logit(loaded, result.ids, 2) - result.summary["baseline_logit"]
    assert result.summary["logit"] - result.summary["baseline_logit"] == pytest.approx(gap, abs=1e-5)
    with pytest.raises(UserError, match="unknown label"):
        explain.explain_label(loaded, TEXT, "maybe")
    with pytest.raises(UserError, match="--steps"):
        explain.explain_label(loaded, TEXT, steps=0)


def test_words_sum_their_tokens(loaded):
    result = explain.explain_label(loaded, TEXT, steps=16)
    assert sum(v for _, v in result.words) == pytest.approx(sum(result.values), abs=1e-5)
    row = result.to_json()
    assert [t["id"] for t in row["tokens"]] == result.ids and row["delta"] == result.summary["delta"]
    views = result.heat_texts("x")
    assert views[0].scale == "signed" and "convergence delta" in views[0].caption


def test_a_prompt_classifier_is_complete_too(loaded, tiny_model_dir):
    """A prompt run scores label words with the LM: the same completeness; words of several tokens are refused."""
    from transformers import AutoModelForCausalLM

    from glmtune.models.verbalizer import PromptClassifier

    tokenizer = loaded.tokenizer
    good, bad = tokenizer.convert_tokens_to_ids(["好", "差"])
    backbone = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt_run = LoadedRun(
        None, loaded.cfg, PromptClassifier(backbone, [[[good]], [[bad]]], 0), tokenizer, ["pos", "neg"]
    )
    result = explain.explain_label(prompt_run, TEXT, steps=128)
    ids, target = result.ids, ["pos", "neg"].index(result.summary["label"])
    baseline = [ids[0]] + [tokenizer.pad_token_id] * (len(ids) - 1)
    gap = logit(prompt_run, ids, target) - logit(prompt_run, baseline, target)
    assert sum(result.values) == pytest.approx(gap, rel=1e-4, abs=1e-4)
    two_tokens = LoadedRun(
        None, loaded.cfg, PromptClassifier(backbone, [[[good, bad]], [[bad]]], 0), tokenizer, ["a", "b"]
    )
    with pytest.raises(UserError, match="one token each"):
        explain.explain_label(two_tokens, TEXT)


# --------------------------------------------------------------------------- replies of a causal LM


@pytest.fixture(scope="module")
def causal(tiny_model_dir) -> lm.LoadedLM:
    loaded = lm.load_base(str(tiny_model_dir), "plain")
    loaded.cfg.generate.max_new_tokens = 4
    return loaded


def test_reply_logprobs_equal_log_softmax(causal):
    prompt = explain.user_prompt("这个好")
    result = explain.explain_reply(causal, prompt, "很好。")
    conversation = Conversation([*prompt.messages, Message("assistant", "很好。")])
    encoded = lm.encode_for_eval(causal, [conversation]).examples[0]
    reply = [t for t, label in enumerate(encoded.labels) if label != -100]
    assert result.ids == [encoded.input_ids[t] for t in reply]
    with torch.no_grad():  # the reference: the HF model itself, one log_softmax over every position
        ids = torch.tensor([encoded.input_ids])  # [1, seq]
        logprobs = causal.model.backbone(input_ids=ids).logits[0].log_softmax(-1)  # [seq, vocab]
    expected = [float(logprobs[t - 1, encoded.input_ids[t]]) for t in reply]
    assert result.values == pytest.approx(expected, abs=1e-5)
    # The eval loss over the same reply (cross-entropy, another code path) is their negative mean.
    assert -result.summary["mean_logprob"] == pytest.approx(
        lm.conversation_loss(causal, [conversation]), abs=1e-5
    )
    assert result.pieces[-1].strip() == "<eos>", "the end-of-turn token is scored too"
    assert result.heat_texts("x")[0].scale == "probability"


def test_a_generated_reply_is_scored(causal):
    prompt = explain.user_prompt("这个差")
    result = explain.explain_reply(causal, prompt)
    assert result.summary["generated"] is True
    assert result.summary["reply"] == lm.reply_all(causal, [prompt])[0]["output"]
    assert result.values and all(v <= 0 for v in result.values)


def test_reply_positions_take_the_last_reply():
    assert explain.reply_positions([-100, 5, 6, -100, -100, 7, 8, 9, -100]) == [5, 6, 7]
    assert explain.reply_positions([-100, -100]) == []


# --------------------------------------------------------------------------- pieces and words


def byte_bpe():
    """A byte-level BPE that knows Latin words but no Chinese: every CJK character is three byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, hello there"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")


def test_pieces_and_words_of_byte_tokens():
    tokenizer = byte_bpe()
    ids = [tokenizer.bos_token_id, *tokenizer("hello world 你好 there")["input_ids"]]
    pieces, texts = token_pieces(tokenizer, ids)
    assert "".join(texts) == tokenizer.decode(ids)
    assert pieces[:4] == ["<s>", "hello", " world", " "]
    assert pieces[4:10] == ["\ufffd", "\ufffd", "你", "\ufffd", "\ufffd", "好"], "a byte token shows U+FFFD"
    groups = word_groups(texts, [i in tokenizer.all_special_ids for i in ids])
    assert sorted(i for g in groups for i in g) == list(range(len(ids)))
    assert ["".join(texts[i] for i in g) for g in groups] == ["<s>", "hello", " world", " 你", "好", " there"]


def test_words_of_a_character_tokenizer():
    texts = ["<bos>", "好", "a", "b", " ", "c", "。"]
    special = [True, False, False, False, False, False, False]
    assert word_groups(texts, special) == [[0], [1], [2, 3], [4, 5], [6]]
