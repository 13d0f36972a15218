"""Knowledge distillation: the KD losses against an independent computation, and teacher → student runs
(classification and sft) on the tiny model, with the errors a user can hit."""

from __future__ import annotations

import json

import pytest
import torch

from glmtune.cli import main
from glmtune.core.errors import UserError
from glmtune.train.techniques import distill
from tests.helpers import sft_config, tiny_config, train, write_config


def reference_kd(student, teacher, label, temperature, alpha) -> float:
    """Hinton et al. 2015 for one row, written out with probabilities (float64)."""
    p_teacher = torch.softmax(teacher.double() / temperature, -1)
    p_student = torch.softmax(student.double() / temperature, -1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum()
    ce = -torch.log_softmax(student.double(), -1)[label]
    return float(alpha * temperature**2 * kl + (1 - alpha) * ce)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (3.0, 0.0)])
def test_classification_kd_loss_matches_a_reference(temperature, alpha):
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 3, generator=gen) * 3, torch.randn(6, 3, generator=gen) * 3
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    loss = distill.classification_loss(student, teacher, labels, temperature, alpha)
    expected = sum(reference_kd(s, t, y, temperature, alpha) for s, t, y in zip(student, teacher, labels)) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # log-probabilities give the same soft targets as logits (a constant shift per row)
    shifted = distill.classification_loss(student, teacher.log_softmax(-1), labels, temperature, alpha)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)


def test_token_kd_loss_matches_a_reference_over_learned_positions():
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, -100, -100]])
    loss = distill.token_loss(student, teacher, labels, temperature=2.0, alpha=0.4)
    terms = [
        reference_kd(student[b, t - 1], teacher[b, t - 1], labels[b, t], 2.0, 0.4)
        for b in range(2)
        for t in range(1, 5)
        if labels[b, t] != -100
    ]
    assert len(terms) == 4 and loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # a teacher with a padded vocabulary (extra embedding rows): only the shared ids count
    padded = torch.cat([teacher, torch.full((2, 5, 3), 9.0)], dim=-1)
    assert distill.token_loss(student, padded, labels, 2.0, 0.4).item() == pytest.approx(
        loss.item(), rel=1e-6
    )


def test_vocab_mismatch_is_a_user_error(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from tests.tiny import make_tokenizer

    same = AutoTokenizer.from_pretrained(tiny_model_dir)
    distill.check_same_vocab(same, AutoTokenizer.from_pretrained(tiny_model_dir), "teacher")
    other = make_tokenizer(list("xyz"))
    with pytest.raises(UserError, match="method.distill.teacher.*tokenizers differ"):
        distill.check_same_vocab(other, same, "teacher")


def loss_at_step_one(run) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r.get("split") == "train" and r["step"] == 1)


def subdir(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


@pytest.mark.usefixtures("reset_accelerate")
def test_classification_distillation(tmp_path, tiny_model_dir, sentiment_file, capsys):
    teacher = train(subdir(tmp_path, "teacher"), tiny_config(tiny_model_dir, sentiment_file))
    student = {"name": "freeze", "trainable_layers": 1}
    plain = train(subdir(tmp_path, "plain"), tiny_config(tiny_model_dir, sentiment_file, method=student))
    kd = {"teacher": str(teacher), "temperature": 2.0}
    runs = {}
    for alpha in (0.0, 0.7):
        cfg = tiny_config(
            tiny_model_dir, sentiment_file, method={**student, "distill": {**kd, "alpha": alpha}}
        )
        runs[alpha] = train(subdir(tmp_path, f"alpha{alpha}"), cfg)
    assert "distilling from" in capsys.readouterr().out
    # alpha 0 is exactly the ordinary loss; alpha > 0 adds the teacher's soft labels
    assert loss_at_step_one(runs[0.0]) == pytest.approx(loss_at_step_one(plain), abs=1e-6)
    assert loss_at_step_one(runs[0.7]) != pytest.approx(loss_at_step_one(plain), abs=1e-4)
    assert json.loads((runs[0.7] / "metrics.json").read_text())["test"]["n"] == 16

    # A teacher whose labels are in another order is refused before anything is written.
    cfg = tiny_config(
        tiny_model_dir, sentiment_file, data={"labels": ["pos", "neg"]}, method={**student, "distill": kd}
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_config(tmp_path, cfg)), "--output", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "the student's labels" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.usefixtures("reset_accelerate")
def test_prompt_teacher_distils_into_a_head_student(tmp_path, tiny_model_dir, sentiment_file):
    prompt = {"template": "这个{text}。真", "verbalizer": {"pos": "好", "neg": "差"}}
    teacher = train(subdir(tmp_path, "teacher"), tiny_config(tiny_model_dir, sentiment_file, prompt=prompt))
    cfg = tiny_config(tiny_model_dir, sentiment_file, method={"distill": {"teacher": str(teacher)}})
    run = train(subdir(tmp_path, "student"), cfg)
    assert (run / "head.safetensors").is_file()


@pytest.mark.usefixtures("reset_accelerate")
def test_sft_distillation(tmp_path, tiny_model_dir, chat_file, capsys):
    data = {"train_file": str(chat_file)}
    small = {"generate": {"max_new_tokens": 2}}
    teacher = train(subdir(tmp_path, "teacher"), sft_config(tiny_model_dir, data, **small))
    plain = train(
        subdir(tmp_path, "plain"), sft_config(tiny_model_dir, data, method={"name": "full"}, **small)
    )
    runs = {}
    for alpha in (0.0, 0.5):
        method = {"name": "full", "distill": {"teacher": str(teacher), "alpha": alpha}}
        runs[alpha] = train(
            subdir(tmp_path, f"alpha{alpha}"), sft_config(tiny_model_dir, data, method=method, **small)
        )
    assert "token-level KL" in capsys.readouterr().out
    assert loss_at_step_one(runs[0.0]) == pytest.approx(loss_at_step_one(plain), abs=1e-5)
    assert loss_at_step_one(runs[0.5]) != pytest.approx(loss_at_step_one(plain), abs=1e-4)

    # A folder that is no run is refused, naming the field.
    classifier = subdir(tmp_path, "classifier")
    cfg = sft_config(tiny_model_dir, data, method={"distill": {"teacher": str(classifier)}})
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_config(tmp_path, cfg)), "--output", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "method.distill.teacher" in capsys.readouterr().err


@pytest.mark.usefixtures("reset_accelerate")
def test_sft_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_model_dir, chat_file, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import NEGATIVE, POSITIVE
    from tests.tiny import make_tokenizer

    chars = sorted({c for w in POSITIVE + NEGATIVE for c in w} | set("这个很。xyz"))
    tokenizer = make_tokenizer(chars)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    other = tmp_path / "other-model"
    LlamaForCausalLM(config).save_pretrained(other)
    tokenizer.save_pretrained(other)
    data = {"train_file": str(chat_file)}
    teacher = train(subdir(tmp_path, "teacher"), sft_config(other, data, generate={"max_new_tokens": 2}))
    cfg = sft_config(tiny_model_dir, data, method={"distill": {"teacher": str(teacher)}})
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_config(tmp_path, cfg)), "--output", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "tokenizers differ" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
