"""Data augmentation (data.augment): each operation, synonyms from Cilin / the bundled English list / a user
file, the back-translation hook (a fake translator), determinism per seed, training split only, SFT user turns,
`glmtune data augment --preview`, config errors and a 2-step run."""

from __future__ import annotations

import json
import random
import textwrap
from collections import Counter

import pytest
import yaml

from glmtune.cli import main
from glmtune.core import config
from glmtune.core.config import AugmentConfig
from glmtune.core.errors import UserError
from glmtune.data import augment
from glmtune.train.techniques.backtranslate import translator_for
from tests.helpers import sft_config, tiny_config, train, write_jsonl

ONLY = dict(synonym_prob=0.0, insert_prob=0.0, swap_prob=0.0, delete_prob=0.0, char_noise_prob=0.0)


def cfg_with(**probs) -> AugmentConfig:
    return AugmentConfig(n_aug=probs.pop("n_aug", 1), **{**ONLY, **probs})


def test_words_split_and_join_back():
    text = "这个手机质量非常好，物流也很快！"
    words = augment.split_words(text, "zh")
    assert "".join(words) == text and len(words) > 5
    assert augment.split_words("the  movie was good", "en") == ["the", "movie", "was", "good"]
    assert augment.language_of("good 好", "auto") == "zh" and augment.language_of("good", "auto") == "en"


def test_synonym_sources():
    zh = augment.synonym_table("zh")
    assert "喜爱" in zh["喜欢"] and "喜欢" not in zh["喜欢"]  # HIT Cilin "=" group (Ee...=): true synonyms
    en = augment.synonym_table("en")
    assert "excellent" in en["great"] and "terrible" in en["awful"]
    assert "好" not in en and "great" not in zh


def test_user_synonyms_file_adds_groups(tmp_path):
    extra = tmp_path / "syn.txt"
    extra.write_text("# comment\nblorp zoink\n", encoding="utf-8")
    table = augment.synonym_table("en", str(extra))
    assert table["blorp"] == ("zoink",) and "excellent" in table["great"]
    with pytest.raises(UserError, match="data.augment.synonyms_file"):
        augment.synonym_table("en", str(tmp_path / "missing.txt"))


def test_synonym_replacement_with_probability_one_replaces_every_known_word():
    rng = random.Random(0)
    out = augment.augment_text("the movie was great", cfg_with(synonym_prob=1.0), rng).split()
    assert out[0] == "the" and out[2] == "was"  # not in the list: kept
    assert out[1] in augment.synonym_table("en")["movie"] and out[3] in augment.synonym_table("en")["great"]


def test_english_synonyms_keep_punctuation_and_capitals():
    rng = random.Random(0)
    out = augment.replace_synonyms(["Great,", "movie!"], 1.0, augment.synonym_table("en"), rng)
    great = {w.capitalize() + "," for w in augment.synonym_table("en")["great"]}
    movie = {w + "!" for w in augment.synonym_table("en")["movie"]}
    assert out[0] in great and out[1] in movie


def test_swap_keeps_the_words_and_delete_never_empties():
    rng = random.Random(0)
    words = "a b c d e f".split()
    swapped = augment.swap_words(words, 1.0, rng)
    assert Counter(swapped) == Counter(words) and swapped != words
    assert augment.delete_words(words, 1.0, rng) in [[w] for w in words]
    assert augment.delete_words(words, 0.0, rng) == words
    # punctuation and spaces are never swapped or deleted
    zh = augment.split_words("好，差！", "zh")
    assert "，" in augment.delete_words(zh, 1.0, rng) and "！" in augment.delete_words(zh, 1.0, rng)


def test_insertion_adds_synonyms_of_words_in_the_text():
    rng = random.Random(3)
    out = augment.insert_synonyms(["great", "movie"], 1.0, augment.synonym_table("en"), rng)
    added = Counter(out) - Counter(["great", "movie"])
    assert sum(added.values()) == 2
    synonyms = set(augment.synonym_table("en")["great"]) | set(augment.synonym_table("en")["movie"])
    assert set(added) <= synonyms


def test_char_noise():
    rng = random.Random(0)
    assert augment.char_noise("hello world", 0.0, rng) == "hello world"
    noisy = augment.char_noise("hello world", 1.0, rng)
    assert noisy != "hello world" and " " in noisy


def test_deterministic_per_seed_and_per_example():
    cfg = AugmentConfig(n_aug=3, synonym_prob=0.3, swap_prob=0.2, delete_prob=0.2, char_noise_prob=0.05)
    texts = ["这个手机质量非常好，物流也很快，推荐购买！", "the staff were friendly and the room was clean"]
    first = augment.augment_texts(texts, cfg, seed=1)
    assert first == augment.augment_texts(texts, cfg, seed=1)
    assert first != augment.augment_texts(texts, cfg, seed=2)
    assert augment.augment_texts(texts[:1], cfg, seed=1) == first[:1], "a copy depends on its example only"
    assert all(copy != text for text, copies in zip(texts, first) for copy in copies)


@pytest.fixture
def fake_translator(tmp_path, monkeypatch):
    """A module ``fake_mt`` with a reversible 'translation' (a back-translation hook as a user would write)."""
    (tmp_path / "fake_mt.py").write_text(
        textwrap.dedent(
            """
            CALLS = []

            def paraphrase(texts):
                CALLS.append(list(texts))
                return ["BT:" + t for t in texts]

            def broken(texts):
                return texts[:1]
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("fake_mt", None)
    return importlib.import_module("fake_mt")


def back_translated(texts: list[str], cfg: AugmentConfig) -> list[list[str]]:
    """augment_texts as the training tasks call it: with the translate callable built from the config."""
    return augment.augment_texts(texts, cfg, seed=0, translate=translator_for(cfg))


def test_back_translation_hook(fake_translator):
    cfg = AugmentConfig(n_aug=0, back_translation="fake_mt:paraphrase")
    assert back_translated(["a b", "c"], cfg) == [["BT:a b"], ["BT:c"]]
    assert fake_translator.CALLS == [["a b", "c"]], "one batched call"
    with pytest.raises(UserError, match="one per input text"):
        back_translated(["a", "b"], AugmentConfig(back_translation="fake_mt:broken"))
    with pytest.raises(UserError, match="data.augment.back_translation"):
        back_translated(["a"], AugmentConfig(back_translation="no_such_module_x:f"))


def test_the_data_layer_needs_the_translate_callable_when_back_translation_is_on():
    """data.augment never builds a translator itself (that would import the inference side)."""
    with pytest.raises(ValueError, match="translate callable"):
        augment.augment_texts(["a"], AugmentConfig(back_translation="fake_mt:paraphrase"), seed=0)
    assert translator_for(AugmentConfig(n_aug=1)) is None


def test_only_the_training_split_is_augmented(sentiment_file, fake_translator):
    from glmtune.train.tasks.classification import Classification

    plain = Classification(config.load(None, [f"data.train_file={sentiment_file}", "data.dataset=null"]))
    plain.load_data()
    on = Classification(
        config.load(
            None,
            [
                f"data.train_file={sentiment_file}",
                "data.dataset=null",
                "data.augment.n_aug=2",
                "data.augment.synonym_prob=0.5",
                "data.augment.delete_prob=0.3",
                "data.augment.back_translation=fake_mt:paraphrase",
            ],
        )
    )
    on.load_data()
    for split in ("validation", "test"):
        assert on.splits[split] == plain.splits[split], split
    originals = plain.splits["train"]
    augmented = on.splits["train"]
    assert [e for e in augmented if e in originals] == originals, "originals kept, in order"
    assert len(augmented) > 2 * len(originals), (
        "copies added (2 word-level + 1 back-translation at most each)"
    )
    by_text = {e.text: e for e in originals}
    for example in augmented:
        if example.text.startswith("BT:"):
            source = by_text[example.text[3:]]
            assert (example.label, example.line) == (source.label, source.line)
    called = fake_translator.CALLS[-1]
    assert called == [e.text for e in originals], "the hook never sees validation or test texts"


def test_sft_augments_user_turns_only():
    from glmtune.data.conversation import Conversation, Message

    conv = Conversation(
        [
            Message("system", "你是一个助手"),
            Message("user", "这个手机质量非常好，物流也很快"),
            Message("assistant", "谢谢你的评价"),
        ]
    )
    out = augment.augment_conversations([conv], AugmentConfig(n_aug=3, synonym_prob=0.5, delete_prob=0.2), 0)
    assert out[0] is conv and len(out) > 1
    for copy in out[1:]:
        assert copy.messages[0] == conv.messages[0] and copy.messages[2] == conv.messages[2]
        assert copy.messages[1].content != conv.messages[1].content


def test_preview_command_shows_originals_beside_copies(tmp_path, sentiment_file, capsys):
    cfg = tiny_config(tmp_path, sentiment_file, data={"augment": {"n_aug": 2, "synonym_prob": 0.5}})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    main(["data", "augment", str(path), "--preview", "2"])
    out = capsys.readouterr().out
    assert out.count("original") == 2 and "aug 1" in out
    with pytest.raises(SystemExit) as exit_:
        main(["data", "augment", str(path), "data.augment.n_aug=0"])
    assert exit_.value.code == 2
    assert "data.augment.n_aug" in capsys.readouterr().err


def test_preview_for_sft(tmp_path, chat_file, capsys):
    cfg = sft_config(
        tmp_path, {"train_file": str(chat_file), "augment": {"n_aug": 1, "char_noise_prob": 0.5}}
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    main(["data", "augment", str(path), "--preview", "1"])
    assert capsys.readouterr().out.count("original  这个") == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["data.augment.n_aug=-1"], "data.augment.n_aug"),
        (["data.augment.swap_prob=1.5"], "data.augment.swap_prob"),
        (["data.augment.language=fr"], "data.augment.language"),
        (["data.augment.back_translation_prompts=[no placeholder]"], "data.augment.back_translation_prompts"),
        (["data.augment.n_aug=1", "data.augment.synonym_prob=0", "data.augment.delete_prob=0"], "n_aug"),
        (["data.augment.nope=1"], "data.augment"),
    ],
)
def test_bad_augment_config(overrides, field):
    with pytest.raises(UserError) as error:
        config.load(None, overrides)
    assert field in str(error.value)


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_two_step_run_with_augmentation(tmp_path, tiny_model_dir, sentiment_file, method):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        method={"name": method, "trainable_layers": 1},
        data={"augment": {"n_aug": 2, "synonym_prob": 0.3, "swap_prob": 0.1, "delete_prob": 0.1}},
    )
    run = train(tmp_path, cfg)
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["train"]["total"] > 64 and summary["test"]["total"] == 16  # 96 - 16 - 16 = 64 originals
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 16


@pytest.mark.usefixtures("reset_accelerate")
def test_two_step_sft_run_with_augmentation(tmp_path, tiny_model_dir):
    from tests.helpers import chat_rows

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    cfg = sft_config(
        tiny_model_dir, {"train_file": str(data), "augment": {"n_aug": 1, "char_noise_prob": 0.3}}
    )
    run = train(tmp_path, cfg)
    assert json.loads((run / "data_summary.json").read_text())["train"]["total"] > 28


def test_back_translation_through_a_model_chains_the_prompts(monkeypatch):
    """A model folder: every text goes through each prompt in turn; the answer to one is the next's input."""
    from glmtune.infer import lm
    from glmtune.train.techniques import backtranslate

    seen = []

    def fake_reply_all(loaded, conversations, **_):
        prompts = [c.messages[-1].content for c in conversations]
        seen.append(prompts)
        return [{"output": f" <{p}> "} for p in prompts]

    monkeypatch.setattr(lm, "load", lambda path: _Loaded())
    monkeypatch.setattr(lm, "reply_all", fake_reply_all)
    cfg = AugmentConfig(back_translation="some-model", back_translation_prompts=["EN {text}", "ZH {text}"])
    assert isinstance(backtranslate.back_translator(cfg), backtranslate.ModelTranslator)
    assert back_translated(["好", "差"], cfg) == [["<ZH <EN 好>>"], ["<ZH <EN 差>>"]]
    assert seen == [["EN 好", "EN 差"], ["ZH <EN 好>", "ZH <EN 差>"]]


class _Loaded:
    """What ModelTranslator touches of lm.LoadedLM: the config it makes greedy and long enough."""

    def __init__(self):
        self.cfg = config.load(None, ["task=sft"])


def test_back_translation_with_a_missing_model_is_a_user_error():
    cfg = AugmentConfig(back_translation="/no/such/model-folder")
    with pytest.raises(UserError, match="data.augment.back_translation"):
        back_translated(["好"], cfg)


def test_back_translation_with_a_chat_model_folder(tmp_path, tiny_model_dir):
    """End to end through glmtune.infer.lm: a (tiny, random) chat model folder generates the copies, greedily."""
    import shutil

    model = tmp_path / "mt"
    shutil.copytree(tiny_model_dir, model)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["chat_template"] = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}。{% endif %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")

    texts = ["这个好", "很差"]
    cfg = AugmentConfig(back_translation=str(model), back_translation_prompts=["{text}", "{text}"])
    copies = back_translated(texts, cfg)
    assert len(copies) == 2 and all(isinstance(c, str) for cs in copies for c in cs)
    assert copies == back_translated(texts, cfg), "greedy: the same copies every time"
