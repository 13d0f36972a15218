"""Sequence classification: a linear head on a pooled token of a causal LM's body, cross-entropy on labels.

Data: ``data.load_classification`` (read, check, stratified split). Outputs: labels.json, data_summary.json,
predictions.jsonl (test) and validation_predictions.jsonl, confusion.png and the metrics table.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from glmtune import methods
from glmtune.core.config import Config
from glmtune.core.runs import RunDir, atomic_write_json
from glmtune.models.anatomy import transformer_layers

LOGGED = ("loss", "accuracy", "macro_f1", "auc")  # validation metrics in log.jsonl and TensorBoard


@torch.no_grad()
def predict(model, loader, accelerator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Class probabilities over a whole (sharded) loader, gathered in dataset order.

    Returns ``probs`` [n, num_labels], ``gold`` [n], mean cross-entropy.
    """
    was_training = model.training
    model.eval()
    indices, logits_all, gold_all = [], [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"])  # [batch, num_labels]
        index, logits, gold = accelerator.gather_for_metrics(
            (batch["index"], logits.float(), batch["labels"])
        )
        indices.append(index.cpu())
        logits_all.append(logits.cpu())
        gold_all.append(gold.cpu())
    model.train(was_training)
    order = torch.argsort(torch.cat(indices))  # batches were length-sorted: put rows back in file order
    logits = torch.cat(logits_all)[order]  # [n, num_labels]
    gold = torch.cat(gold_all)[order]  # [n]
    loss = F.cross_entropy(logits, gold).item() if len(gold) else float("nan")
    return logits.softmax(-1), gold, loss


class Classification:
    """The classification task (see ``glmtune.train.tasks`` for the protocol)."""

    logged = LOGGED
    compare_before_after = False  # an untrained head is chance: nothing to compare

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.frozen = None  # set by make_loaders
        self.loaders: dict[str, Any] = {}
        self._probs: dict[str, Any] = {}

    # 1. data
    def load_data(self) -> None:
        from glmtune.data.augment import augment_examples
        from glmtune.train import continue_from
        from glmtune.train.techniques.backtranslate import translator_for

        self.earlier = continue_from.check(self.cfg)  # model.from_run: its label order becomes data.labels
        self.dataset = continue_from.load_classification(self.cfg, self.earlier)
        # data.augment: noisy copies of the training split only; validation and test stay as read
        read = len(self.dataset.train)
        self.dataset.train = augment_examples(
            self.dataset.train,
            self.cfg.data.augment,
            self.cfg.train.seed,
            translator_for(self.cfg.data.augment),
        )
        self.dataset.counts["train"].resize("augmented copies (data.augment)", read, len(self.dataset.train))
        augmented = len(self.dataset.train)  # data.replay: a share of the earlier run's training split
        self.dataset.train = continue_from.replay(
            self.cfg, self.earlier, self.dataset.train, read, self.dataset.counts["train"]
        )
        self.replayed = len(self.dataset.train) - augmented
        self.labels = self.dataset.labels
        self.splits = {name: getattr(self.dataset, name) for name in ("train", "validation", "test")}
        self.prompt = None  # classification through a prompt (cfg.prompt): the LM's head scores label words
        self.teacher_logp = None  # method.distill: the teacher's log-probabilities of the training split
        if self.cfg.prompt.template is not None:
            from glmtune.data.prompt import Prompt

            self.prompt = Prompt.build(self.cfg.prompt, self.labels, self.splits["train"], self.cfg.data.seed)

    # 2. model
    def build_model(self) -> tuple[torch.nn.Module, Any]:
        from glmtune.models import load_classifier
        from glmtune.models.load import load_config

        cfg = self.cfg
        overrides = methods.config_overrides(cfg.method, load_config(cfg.model))  # e.g. P-tuning's prefix
        if self.prompt is not None:
            from glmtune.models.verbalizer import load_prompt_classifier

            return load_prompt_classifier(
                cfg.model, self.prompt, dropout=cfg.train.dropout, config_overrides=overrides
            )
        return load_classifier(
            cfg.model, len(self.labels), dropout=cfg.train.dropout, config_overrides=overrides
        )

    # 3. batches: tokenised once, length-grouped, padded per batch
    def make_loaders(self, tokenizer: Any, model: torch.nn.Module) -> dict[str, Any]:
        from glmtune import data as data_mod
        from glmtune.infer import classifier

        cfg, train = self.cfg, self.cfg.train
        pad_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        encoded = {
            name: classifier.encode(self, tokenizer, examples, train.max_seq_len)
            for name, examples in self.splits.items()
        }
        if cfg.method.distill.teacher is not None:  # soft labels once, before the run folder exists
            from glmtune.train.techniques import distill

            texts = [example.text for example in self.splits["train"]]
            self.teacher_logp = distill.teacher_log_probs(cfg, texts, self.labels)
        for name, ds in encoded.items():  # cut to max_seq_len tokens, never dropped: a text always fits
            self.dataset.counts[name].truncated = ds.num_truncated
        self.frozen = None  # freeze: the frozen layers' outputs, kept per training example (models.speed)
        if cfg.method.name == "freeze" and train.adversarial.name == "none":  # FGM/PGD perturb their input
            from glmtune.methods.speed import frozen_outputs

            _, layers = transformer_layers(model.backbone)
            self.frozen = frozen_outputs(model.backbone, layers, cfg.method.frozen_cache_gb)
        return {
            "train": data_mod.make_loader(
                encoded["train"],
                train.batch_size,
                seed=train.seed,
                shuffle=True,
                group_by_length=train.group_by_length,
                pad_id=pad_id,
            ),
            **{
                name: data_mod.make_loader(
                    encoded[name],
                    cfg.eval.batch_size,
                    seed=0,
                    shuffle=False,
                    group_by_length=True,
                    pad_id=pad_id,
                )
                for name in ("validation", "test")
            },
        }

    def describe(self) -> list[str]:
        from glmtune.data.summary import counts_table
        from glmtune.train.continue_from import describe

        truncated = f" (truncated: cut to train.max_seq_len={self.cfg.train.max_seq_len} tokens)"
        lines = describe(self.cfg) + ["examples per split" + truncated, counts_table(self.dataset.counts)]
        if self.prompt is not None:
            lines.append(f"prompt ({len(self.prompt.demonstrations)}-shot): {self.prompt.render('{text}')!r}")
            # Words of one token are scored in one forward pass; longer ones cost a pass per word (see docs/recipes.md, "Prompt learning and soft prompts").
            lengths = [len(ids) for label in self.prompt.candidates(self.tokenizer) for ids in label]
            passes = 1 if max(lengths) == 1 else len(lengths)
            lines.append(f"{len(lengths)} label words, tokens {lengths}: {passes} forward pass(es) per text")
        if self.teacher_logp is not None:
            lines.append(f"distilling from {self.cfg.method.distill.teacher}")
        if self.frozen is not None:
            budget = self.cfg.method.frozen_cache_gb
            lines.append(
                f"the {self.frozen.frozen} frozen layers run once per training example: their outputs are kept "
                f"(up to {budget:g} GB, method.frozen_cache_gb) and reused from epoch 2 on"
            )
        return lines

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def eval_scale(self, split: str) -> float:
        """The work of ``split``'s final evaluation relative to validation's (a time budget's multiplier for a
        timed validation evaluation): their sizes' ratio; 0.0 for an empty split, inf when only validation is."""
        size, reference = self.size(split), self.size("validation")
        if not size:
            return 0.0
        return size / reference if reference else float("inf")

    # 4. the loss of one batch
    def _frozen(self, batch: dict[str, Any]) -> Any:
        """Lets the frozen layers reuse their kept outputs for this training batch (freeze; else nothing)."""
        if self.frozen is None:
            return nullcontext()
        return self.frozen.training_batch(batch["index"], batch["attention_mask"])

    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], accelerator: Any
    ) -> tuple[torch.Tensor, int]:
        train = self.cfg.train
        with self._frozen(batch), accelerator.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"])  # [batch, num_labels]
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=train.label_smoothing)
        if (
            train.rdrop_alpha
        ):  # R-Drop: a second pass under other dropout masks (glmtune.train.techniques.regularize)
            from glmtune.train.techniques.regularize import rdrop_loss

            with self._frozen(batch), accelerator.autocast():
                logits_b = model(batch["input_ids"], batch["attention_mask"])  # [batch, num_labels]
            loss = rdrop_loss(logits, logits_b, batch["labels"], train.rdrop_alpha, train.label_smoothing)
        if self.teacher_logp is not None:
            from glmtune.train.techniques import distill

            teacher = self.teacher_logp.to(logits.device)[batch["index"]]  # [batch, num_labels]
            kd = self.cfg.method.distill
            loss = distill.classification_loss(logits, teacher, batch["labels"], kd.temperature, kd.alpha)
        return loss, int(batch["attention_mask"].sum())

    # 5. evaluation
    def evaluate(
        self, model: torch.nn.Module, split: str, accelerator: Any, final: bool = False
    ) -> dict[str, Any]:
        """Every classification metric of ``split`` (``n``: its used examples, the counts table's)."""
        from glmtune import metrics as evaluation

        probs, gold, loss = predict(model, self.loaders[split], accelerator)
        self._probs[split] = (probs, gold)
        return evaluation.classification_metrics(gold.tolist(), probs.numpy(), self.labels, loss=loss)

    # 6. the run folder
    def write_start(self, run: RunDir) -> None:
        from glmtune.train.continue_from import write_lineage

        write_lineage(run, self.cfg, self.replayed)
        atomic_write_json(run.labels, self.labels)
        atomic_write_json(run.path / "data_summary.json", self.dataset.summary())
        if self.prompt is not None:
            atomic_write_json(run.prompt, self.prompt.to_json())

    def write_outputs(self, run: RunDir, results: dict[str, Any]) -> None:
        from glmtune import metrics as evaluation

        for split, path in (("validation", run.validation_predictions), ("test", run.predictions)):
            if split in results:
                probs, gold = self._probs[split]
                texts = [example.text for example in self.splits[split]]
                rows = evaluation.prediction_rows(texts, gold.tolist(), probs.numpy(), self.labels)
                evaluation.write_predictions(path, rows)
        if "test" in results:
            evaluation.plot_confusion(results["test"]["confusion_matrix"], self.labels, run.confusion_plot)
        print(
            evaluation.format_metrics_table({k: results[k] for k in ("validation", "test") if k in results})
        )


__all__ = ["Classification", "predict"]
