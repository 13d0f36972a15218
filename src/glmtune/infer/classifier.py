"""Use a trained classification run: load it back, predict texts, evaluate a labelled file.

Runs on one process (no accelerate launch needed); bf16 autocast where the hardware has it, like training.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmtune import methods
from glmtune.core import config as config_mod
from glmtune.core.config import Config
from glmtune.core.runs import RunDir, read_json


@dataclass
class LoadedRun:
    run: RunDir
    cfg: Config
    classifier: torch.nn.Module
    tokenizer: Any
    labels: list[str]
    prompt: Any = None  # a prompt run's data.prompt.Prompt (template, label words, demonstrations)


def load_run(path: str | Path, *, full_precision: bool = False) -> LoadedRun:
    """Base model + the run's trained weights, in eval mode (``full_precision``: the base unquantized, whatever
    ``model.quantization`` the run trained with — what ``export --merge`` folds a QLoRA adapter into)."""
    from glmtune.models import load_classifier
    from glmtune.models.load import load_config

    run = RunDir(path)
    run.check(need_weights=True)
    cfg = config_mod.load(run.config)
    if full_precision:
        cfg = config_mod.without_quantization(cfg)
    labels = read_json(run.labels)
    # Built as in training (a P-tuning prefix must exist before its weights load back).
    overrides = methods.config_overrides(cfg.method, load_config(cfg.model))
    prompt = None
    if cfg.prompt.template is not None:  # classification through a prompt: the LM's own head scores labels
        from glmtune.data.prompt import Prompt
        from glmtune.models.verbalizer import load_prompt_classifier

        prompt = Prompt.from_json(read_json(run.prompt))
        classifier, tokenizer = load_prompt_classifier(cfg.model, prompt, config_overrides=overrides)
    else:
        classifier, tokenizer = load_classifier(cfg.model, len(labels), config_overrides=overrides)
    methods.load(classifier, cfg.method, run)
    return LoadedRun(run, cfg, classifier, tokenizer, labels, prompt)


def _autocast(cfg: Config):
    from glmtune.models.precision import mixed_precision

    precision = mixed_precision(cfg.train)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def encode(loaded: LoadedRun | Any, tokenizer: Any, examples: list[Any], max_seq_len: int) -> Any:
    """Examples → a ClassificationDataset: plain texts for a head, or prompts for a prompt run (``loaded.prompt``)."""
    from glmtune.data import encode_examples
    from glmtune.data.prompt import encode_prompt_examples

    if loaded.prompt is not None:
        return encode_prompt_examples(tokenizer, examples, loaded.prompt, max_seq_len)
    return encode_examples(tokenizer, examples, max_seq_len)


def predict_texts(loaded: LoadedRun, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities [n, num_labels] for raw texts, in input order."""
    return predict_logits(loaded, texts, batch_size).float().softmax(-1)


def evaluate_texts(loaded: LoadedRun, texts: list[str], gold: list[int]) -> tuple[torch.Tensor, float]:
    """Class probabilities [n, num_labels] of labelled texts and their loss: the mean cross-entropy of the gold
    labels, as training's validation loss is computed (``glmtune eval``)."""
    import torch.nn.functional as F

    logits = predict_logits(loaded, texts)  # [n, num_labels]
    loss = F.cross_entropy(logits, torch.tensor(gold, dtype=torch.long)).item() if texts else float("nan")
    return logits.softmax(-1), loss


@torch.no_grad()
def predict_logits(loaded: LoadedRun, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
    """Class logits [n, num_labels] (fp32, on the CPU) for raw texts, in input order, on the model's device."""
    from glmtune.data import Example, make_loader

    cfg = loaded.cfg
    examples = [Example(text=t, label=0, line=i + 1, source="input") for i, t in enumerate(texts)]
    dataset = encode(loaded, loaded.tokenizer, examples, cfg.train.max_seq_len)
    loader = make_loader(
        dataset,
        batch_size or cfg.eval.batch_size,
        seed=0,
        shuffle=False,
        group_by_length=True,
        pad_id=loaded.tokenizer.pad_token_id,
    )
    device = next(loaded.classifier.parameters()).device
    result = torch.zeros(len(texts), len(loaded.labels))
    for batch in loader:
        with _autocast(cfg):
            logits = loaded.classifier(
                batch["input_ids"].to(device), batch["attention_mask"].to(device)
            )  # [batch, num_labels]
        result[batch["index"]] = logits.float().cpu()
    return result


def prediction(probs_row: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    return {
        "label": labels[int(probs_row.argmax())],
        "probs": {name: round(float(p), 6) for name, p in zip(labels, probs_row)},
    }
