"""SFT evaluation settings: when validation replies are generated (``eval.generation``) and what a split's final
evaluation costs next to validation's (``eval_scale``, for a time budget); classification's scale too."""

from __future__ import annotations

import pytest

from glmtune.core import config as config_mod
from glmtune.core.errors import UserError
from glmtune.train import tasks
from tests.helpers import chat_rows, sft_config, tiny_config, write_jsonl


@pytest.mark.parametrize(("value", "stored"), [("end", "end"), ("every", "every"), ("none", "none"), (3, 3)])
def test_eval_generation_takes_words_and_positive_integers(value, stored):
    assert config_mod.from_dict({"task": "sft", "eval": {"generation": value}}).eval.generation == stored


@pytest.mark.parametrize("value", [0, -2, "weekly", "End"])
def test_other_eval_generation_values_are_user_errors(value):
    with pytest.raises(UserError, match="field 'eval.generation'.*end, every, none or a positive integer"):
        config_mod.from_dict({"task": "sft", "eval": {"generation": value}})


def sft_task(tiny_model_dir, tmp_path, **sections):
    data = {"train_file": str(write_jsonl(tmp_path / "chat.jsonl", chat_rows()))}
    return tasks.create(config_mod.from_dict(sft_config(tiny_model_dir, data, **sections)))


def schedule(task, evaluations: int = 6) -> list[bool]:
    """Which of the validation evaluations during training generate, then whether the final ones do."""
    during = [task._generates("validation", final=False) for _ in range(evaluations)]
    return during + [task._generates("validation", final=True), task._generates("test", final=True)]


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("end", [False] * 6 + [True, True]),
        ("every", [True] * 6 + [True, True]),
        (2, [False, True, False, True, False, True, True, True]),
        ("none", [False] * 8),
    ],
)
def test_loss_at_every_evaluation_generation_as_scheduled(tiny_model_dir, tmp_path, generation, expected):
    task = sft_task(tiny_model_dir, tmp_path, eval={"generation": generation})
    assert schedule(task) == expected
    assert set(task.logged) >= {"loss", "perplexity"}
    assert ("rougeL_char" in task.logged) == (generation in ("every", 2))


def test_a_generation_metric_generates_at_every_evaluation(tiny_model_dir, tmp_path):
    task = sft_task(tiny_model_dir, tmp_path, train={"metric": "bleu4"}, eval={"generation": "end"})
    assert schedule(task) == [True] * 8
    with pytest.raises(UserError, match="eval.generation"):
        sft_task(tiny_model_dir, tmp_path, train={"metric": "bleu4"}, eval={"generation": "none"})


def conversation(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def test_sft_eval_scale_is_prompt_tokens_plus_reply_limit_relative_to_validation(tiny_model_dir, tmp_path):
    from glmtune.data.conversation import Message
    from glmtune.data.templates import encode_prompt
    from glmtune.models.load import load_tokenizer

    validation = [conversation("好", "很好。"), conversation("差", "很差。")]
    test = [
        conversation("这个很好很好很好", "很好。") for _ in range(3)
    ]  # more conversations, longer prompts
    data = {
        "train_file": str(write_jsonl(tmp_path / "train.jsonl", chat_rows())),
        "validation_file": str(write_jsonl(tmp_path / "validation.jsonl", validation)),
        "test_file": str(write_jsonl(tmp_path / "test.jsonl", test)),
    }
    cfg = config_mod.from_dict(sft_config(tiny_model_dir, data, generate={"max_new_tokens": 20}))
    task = tasks.create(cfg)
    task.load_data()
    tokenizer = load_tokenizer(cfg.model)

    def work(conversations: list[dict]) -> int:
        prompts = [encode_prompt(tokenizer, [Message(**c["messages"][0])], "plain") for c in conversations]
        return sum(len(p) for p in prompts) + 20 * len(prompts)

    assert task.eval_scale("validation") == 1.0
    assert task.eval_scale("test") == pytest.approx(work(test) / work(validation))
    assert task.eval_scale("test") > 1.5


def test_sft_eval_scale_without_generation_is_the_loss_pass_tokens(tiny_model_dir, tmp_path):
    task = sft_task(tiny_model_dir, tmp_path, eval={"generation": "none"})
    task.load_data()
    tokens = {s: sum(len(e.input_ids) for e in task.encoded[s].examples) for s in ("validation", "test")}
    assert task.eval_scale("test") == pytest.approx(tokens["test"] / tokens["validation"])


def test_classification_eval_scale_is_the_size_ratio(tiny_model_dir, sentiment_file):
    cfg = tiny_config(tiny_model_dir, sentiment_file, data={"validation_size": 16, "test_size": 8})
    task = tasks.create(config_mod.from_dict(cfg))
    task.load_data()
    assert task.eval_scale("test") == 0.5 and task.eval_scale("validation") == 1.0
