"""Use a trained classification run: load it back, predict texts, evaluate a labelled file.

Runs on one process (no accelerate launch needed); bf16 autocast where the hardware has it, like training.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmtune import config as config_mod
from glmtune import methods
from glmtune.config import Config
from glmtune.runs import RunDir, read_json


@dataclass
class LoadedRun:
    run: RunDir
    cfg: Config
    classifier: torch.nn.Module
    tokenizer: Any
    labels: list[str]


def load_run(path: str | Path) -> LoadedRun:
    """Base model + the run's trained weights, in eval mode."""
    from glmtune.models import load_classifier
    from glmtune.models.load import load_config

    run = RunDir(path)
    run.check(need_weights=True)
    cfg = config_mod.load(run.config)
    labels = read_json(run.labels)
    # Built as in training (a P-tuning prefix must exist before its weights load back).
    overrides = methods.config_overrides(cfg.method, load_config(cfg.model))
    classifier, tokenizer = load_classifier(cfg.model, len(labels), config_overrides=overrides)
    methods.load(classifier, cfg.method, run)
    return LoadedRun(run, cfg, classifier, tokenizer, labels)


def _autocast(cfg: Config):
    from glmtune.train import mixed_precision

    precision = mixed_precision(cfg.train)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_texts(loaded: LoadedRun, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities [n, num_labels] for raw texts, in input order."""
    from glmtune.data import Example, encode_examples, make_loader

    cfg = loaded.cfg
    examples = [Example(text=t, label=0, line=i + 1, source="input") for i, t in enumerate(texts)]
    dataset = encode_examples(loaded.tokenizer, examples, cfg.train.max_seq_len)
    loader = make_loader(
        dataset,
        batch_size or cfg.eval.batch_size,
        seed=0,
        shuffle=False,
        group_by_length=True,
        pad_id=loaded.tokenizer.pad_token_id,
    )
    probs = torch.zeros(len(texts), len(loaded.labels))
    for batch in loader:
        with _autocast(cfg):
            logits = loaded.classifier(batch["input_ids"], batch["attention_mask"])  # [batch, num_labels]
        probs[batch["index"]] = logits.float().softmax(-1)
    return probs


def prediction(probs_row: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    return {
        "label": labels[int(probs_row.argmax())],
        "probs": {name: round(float(p), 6) for name, p in zip(labels, probs_row)},
    }
