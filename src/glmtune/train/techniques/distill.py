"""Knowledge distillation (``method.distill``): a student learns from a finished teacher run's soft labels.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the loss is
``alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, hard labels)``; the T²
keeps the soft term's gradients on the scale of the hard term's as T changes.

- Classification: the teacher (any classification run: head or prompt, any tokenizer) labels the training split
  once, before training (one pass; its log-probabilities, which give the same softmax(·/T) as its logits, are
  looked up per example by index). Teacher and student need the same label set, in the same order.
- SFT: token-level KL at every learned position (where the hard loss is taken), teacher logits computed on the
  fly in the loop (teacher in eval mode, no gradients, the same autocast as the student), so the two must share
  a tokenizer vocabulary: checked before training, with a clear error when they do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glmtune.core.config import Config
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir
from glmtune.models.causal import IGNORE_INDEX

FIELD = "method.distill.teacher"


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` per row: ``[..., classes]`` → ``[...]`` (fp32)."""
    student_logp = (student.float() / temperature).log_softmax(-1)
    teacher_logp = (teacher.float() / temperature).log_softmax(-1)
    kl = F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True).sum(-1)
    return kl * temperature**2


def classification_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Batch mean of the KD loss: student/teacher logits ``[batch, classes]``, hard ``labels`` ``[batch]``."""
    soft = soft_kl(student, teacher, temperature).mean()
    hard = F.cross_entropy(student.float(), labels)
    return alpha * soft + (1 - alpha) * hard


def token_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Token mean, over the learned positions, of the KD loss for next-token prediction.

    ``student``/``teacher`` logits ``[batch, seq, vocab]`` predict ``labels`` ``[batch, seq]`` shifted by one
    (``-100``: not learned, so neither term counts there)."""
    # Embedding rows padded beyond the tokenizer (one model may have more) are never real tokens.
    vocab = min(student.shape[-1], teacher.shape[-1])
    targets = labels[:, 1:]  # [batch, seq - 1]
    learned = targets != IGNORE_INDEX  # [batch, seq - 1]
    student_learned = student[:, :-1][learned][:, :vocab]  # [tokens, vocab]
    teacher_learned = teacher[:, :-1][learned][:, :vocab]  # [tokens, vocab]
    if student_learned.shape[0] == 0:
        return student.sum() * 0.0
    soft = soft_kl(student_learned, teacher_learned, temperature).mean()
    hard = F.cross_entropy(student_learned.float(), targets[learned])
    return alpha * soft + (1 - alpha) * hard


def _teacher_run(cfg: Config) -> tuple[RunDir, Config]:
    from glmtune.core import config as config_mod

    teacher = cfg.method.distill.teacher
    run = RunDir(Path(teacher or ""))
    try:
        info = run.check(need_weights=True)
    except UserError as error:
        raise UserError(f"teacher run: {error.message}", file=error.file, field=FIELD) from None
    if info.get("task", "classification") != cfg.task:
        raise UserError(
            f"the teacher is a {info.get('task')} run",
            file=str(run.path),
            field=FIELD,
            expected=f"a {cfg.task} run",
        )
    return run, config_mod.load(run.config)


def teacher_log_probs(cfg: Config, texts: list[str], labels: list[str]) -> torch.Tensor:
    """A classification teacher's log-probabilities for ``texts``: ``[n, num_labels]`` (one pass, no grad)."""
    from glmtune.infer import classifier

    run, _ = _teacher_run(cfg)
    loaded = classifier.load_run(run.path)
    if loaded.labels != labels:
        raise UserError(
            f"the teacher's labels are {loaded.labels}",
            file=str(run.labels),
            field=FIELD,
            expected=f"the student's labels, in the same order: {labels} (set data.labels)",
        )
    if torch.cuda.is_available():
        loaded.classifier.to("cuda")
    return classifier.predict_logits(loaded, texts).float().log_softmax(-1)


class LMTeacher:
    """An SFT teacher run for token-level distillation, loaded once and scored batch by batch in the loop."""

    def __init__(self, cfg: Config, student_tokenizer: Any):
        from glmtune.infer import lm

        run, _ = _teacher_run(cfg)
        self.loaded = lm.load_run(run.path)
        check_same_vocab(self.loaded.tokenizer, student_tokenizer, str(run.path))
        self.model = self.loaded.model.eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, inputs: dict[str, torch.Tensor], accelerator: Any) -> torch.Tensor:
        """The teacher's logits for the student's batch ``[batch, seq, vocab]``, under the student's autocast."""
        device = accelerator.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with accelerator.autocast():
            return self.model(**inputs).logits


def check_same_vocab(teacher_tokenizer: Any, student_tokenizer: Any, teacher: str) -> None:
    """Token-level KL compares distributions over the same token ids: the vocabularies must be identical."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differing = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise UserError(
            f"teacher and student tokenizers differ ({len(teacher_vocab)} vs {len(student_vocab)} tokens, "
            f"{differing} entries differ)",
            file=teacher,
            field=FIELD,
            expected="a teacher with the student's tokenizer for sft distillation (classification has no such limit)",
        )


__all__ = [
    "LMTeacher",
    "check_same_vocab",
    "classification_loss",
    "soft_kl",
    "teacher_log_probs",
    "token_loss",
]
