"""evaluate.generation_metrics: BLEU-4 and character/word ROUGE x 100, checked against values worked out by
hand on tiny cases and against sacrebleu and rouge-score called directly."""

from __future__ import annotations

import math

import pytest

from glmtune.metrics import GENERATION_METRICS, generation_metrics


def test_identical_texts_score_100_everywhere():
    texts = ["我爱北京天安门。", "今天天气很好", "The tea is ready."]
    assert generation_metrics(texts, texts) == pytest.approx({name: 100.0 for name in GENERATION_METRICS})


def test_hand_computed_rouge_on_one_pair():
    # characters 我 爱 北 京 vs 我 爱 上 海: unigrams 2/4; bigrams {我爱} of 3; longest common subsequence 2
    # jieba words 我 爱 北京 vs 我 爱 上海: unigrams 2/3; bigrams {我 爱} of 2; LCS 2 of 3
    metrics = generation_metrics(["我爱北京"], ["我爱上海"])
    assert metrics["rouge1_char"] == pytest.approx(50.0)
    assert metrics["rouge2_char"] == pytest.approx(100 / 3)
    assert metrics["rougeL_char"] == pytest.approx(50.0)
    assert metrics["rouge1_word"] == pytest.approx(200 / 3)
    assert metrics["rouge2_word"] == pytest.approx(50.0)
    assert metrics["rougeL_word"] == pytest.approx(200 / 3)
    assert metrics["exact_match"] == 0.0


def test_hand_computed_bleu():
    # 7 characters, the last differs: n-gram precisions 6/7, 5/6, 4/5, 3/4, same length (no brevity penalty):
    # BLEU = (6/7 * 5/6 * 4/5 * 3/4) ** (1/4) = (3/7) ** 0.25
    metrics = generation_metrics(["我爱北京天安门"], ["我爱北京天安山"])
    assert metrics["bleu4"] == pytest.approx(100 * (3 / 7) ** 0.25)
    # English words: precisions 4/5, 3/4, 2/3, 1/2 → (0.2) ** 0.25
    assert generation_metrics(["a b c d e"], ["a b c d f"])["bleu4"] == pytest.approx(100 * 0.2**0.25)


def test_empty_texts():
    metrics = generation_metrics(["", "好"], ["", "好的"])
    # pair 1: both empty → a perfect match (ROUGE 100, exact match); pair 2: 好 vs 好的 → R1 F1 = 2/3 (chars)
    assert metrics["exact_match"] == 50.0
    assert metrics["rouge1_char"] == pytest.approx((100 + 200 / 3) / 2)
    one_empty = generation_metrics([""], ["答案"])
    assert one_empty["bleu4"] == 0.0 and one_empty["rougeL_char"] == 0.0 and one_empty["rouge1_word"] == 0.0
    assert all(math.isfinite(value) for value in generation_metrics(["  "], [""]).values())


def test_matches_sacrebleu_and_rouge_score_called_directly():
    import jieba
    import sacrebleu
    from rouge_score.rouge_scorer import RougeScorer

    predictions = [
        "北京今天天气晴朗，气温二十度。",
        "他喜欢打篮球",
        "The library is closed on Monday.",
        "我们沿着海边散步",
    ]
    references = [
        "今天北京晴，二十度。",
        "他喜欢打篮球。",
        "The library is closed on Mondays.",
        "我们沿着海滩散步。",
    ]
    metrics = generation_metrics(predictions, references)
    assert metrics["bleu4"] == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score
    )

    class Chars:
        def tokenize(self, text):
            return [c for c in text if not c.isspace()]

    class Words:
        def tokenize(self, text):
            return [w for w in jieba.lcut(text) if w.strip()]

    for kind, tokenizer in (("char", Chars()), ("word", Words())):
        scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
        scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
        for name in ("rouge1", "rouge2", "rougeL"):
            expected = 100 * sum(s[name].fmeasure for s in scores) / len(scores)
            assert metrics[f"{name}_{kind}"] == pytest.approx(expected)
    assert metrics["exact_match"] == 0.0
    assert all(type(value) is float for value in metrics.values())


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no examples"):
        generation_metrics([], [])
