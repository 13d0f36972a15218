"""Supervised fine-tuning (``task: sft``): a causal LM learns the assistant's replies of conversations.

Data: ``data.sft.load_sft`` (files or built-in datasets, weighted mix, seeded splits) → ``data.templates``
(one chat template for every split, chosen knowing whether the data has tools; label masks, whole-round
truncation) → padded or packed batches. A conversation that does not fit ``train.max_seq_len`` is dropped from
its split for everything (loss, generation, ``n``), as the counts table says (``data.summary``). Loss: next-token
cross-entropy over the learned (label) tokens, a token mean over the batch. Evaluation of a split: the same
loss and its perplexity over every encodable conversation (the LM head on learned positions only), and, when
``eval.generation`` asks for it (by default the final evaluations: before and after training, and test; a
generation ``train.metric`` at every evaluation), a reply generated for every conversation of the split
(``infer.lm.generate_replies``: continuous batching, greedy unless ``generate.do_sample``) scored against the
reference reply by ``evaluation.generation_metrics``. ``eval_scale`` tells a time budget what the final
evaluation of a split costs next to validation's.
Outputs: metrics.json (``validation``, ``test``, ``before``/``after``), predictions.jsonl (prompt, reference,
output), data_summary.json. Using a finished run (``predict``, ``chat``) is ``glmtune.infer.lm``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from glmtune import methods
from glmtune.core.config import GENERATION_METRICS, Config
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, atomic_write_json
from glmtune.data.conversation import Conversation
from glmtune.infer.lm import (
    as_config_field,
    generate_replies,
    generation_config,
    prompt_ids,
    reference_text,
    resolve_template,
)
from glmtune.models.causal import accepts_learned_mask, learned_mask, token_losses

LOSS_METRICS = ("loss", "perplexity")
TABLE_ROWS = (
    ("loss", "loss"),
    ("perplexity", "perplexity"),
    ("bleu4", "bleu4"),
    ("rouge1_char", "rouge1_char"),
    ("rouge2_char", "rouge2_char"),
    ("rougeL_char", "rougeL_char"),
    ("rougeL_word", "rougeL_word"),
    ("exact_match", "exact_match"),
    ("n", "n"),
)


class SFT:
    """The SFT task (see ``glmtune.train.tasks`` for the protocol)."""

    compare_before_after = True  # metrics.json: the untuned model's validation metrics next to the tuned

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.loaders: dict[str, Any] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.teacher: Any = None  # method.distill: the teacher run (distill.LMTeacher), set with the loaders
        self.generation_metric = cfg.train.metric not in LOSS_METRICS
        if self.generation_metric and cfg.eval.generation == "none":
            raise UserError(
                f"got none, but train.metric {cfg.train.metric} is scored on generated replies",
                field="eval.generation",
                expected="end, every or a positive integer (a generation train.metric generates at every evaluation)",
            )
        # validation evaluations during training from one that generates to the next (None: none generates)
        self.generate_every = 1 if self.generation_metric else cfg.eval.generate_every()
        self.evaluations = 0  # validation evaluations during training so far, in this process
        self.logged = LOSS_METRICS + (GENERATION_METRICS if self.generate_every else ())
        self.prompts: dict[str, list[list[int]]] = {}  # split → generation prompt ids, made once
        self.progress: str | None = None  # train.run names the untuned model's evaluation: its progress bars

    # 1. data: read, split, then tokenizer, template and encoding (every bad-input error happens here)
    def load_data(self) -> None:
        from glmtune.data.augment import augment_conversations
        from glmtune.data.sft import load_sft
        from glmtune.models.load import load_tokenizer
        from glmtune.train import continue_from
        from glmtune.train.techniques.backtranslate import translator_for

        cfg = self.cfg
        earlier = continue_from.check(cfg)  # model.from_run: a compatible finished sft run
        self.data = load_sft(cfg.data)
        # data.augment: copies of training conversations with noisy user turns; validation and test as read
        read = len(self.data.train)
        self.data.train = augment_conversations(
            self.data.train, cfg.data.augment, cfg.train.seed, translator_for(cfg.data.augment)
        )
        self.data.counts["train"].resize("augmented copies (data.augment)", read, len(self.data.train))
        augmented = len(self.data.train)  # data.replay: a share of the earlier run's training split
        self.data.train = continue_from.replay(cfg, earlier, self.data.train, read, self.data.counts["train"])
        self.replayed = len(self.data.train) - augmented
        self.splits = {name: getattr(self.data, name) for name in ("train", "validation", "test")}
        self.tokenizer = load_tokenizer(cfg.model)
        # One format for every split, chosen knowing whether any conversation has tools
        self.format = resolve_template(self.tokenizer, cfg.data.template, *self.splits.values())
        if cfg.data.template == "auto" and self.format.name != resolve_template(self.tokenizer, "auto").name:
            # the tools chose another format than 'auto' alone gives: config.yaml names it, so a finished run
            # (predict, chat, serve) prompts the model in the format it trained in
            cfg.data.template = self.format.name
        self.knowledge = _retrieve(self, cfg)  # knowledge.kb: passages into each last user turn, fitted
        self.encoded = {
            name: _encode(self.tokenizer, convs, self.format, cfg) for name, convs in self.splits.items()
        }
        for name, encoded in self.encoded.items():
            self.data.counts[name].encoded(encoded.num_truncated, encoded.num_dropped, cfg.train.max_seq_len)
        # what each split trains or is evaluated on: the conversations that fit
        self.used = {name: [self.splits[name][i] for i in e.kept] for name, e in self.encoded.items()}
        if not self.encoded["train"].examples:
            raise UserError(
                f"no training conversation fits train.max_seq_len={cfg.train.max_seq_len} "
                f"({self.encoded['train'].num_dropped} dropped)",
                field="train.max_seq_len",
                expected="a larger train.max_seq_len",
            )

    # 2. model
    def build_model(self) -> tuple[torch.nn.Module, Any]:
        from glmtune.models.causal import CausalLM
        from glmtune.models.load import load_causal_lm, load_config

        cfg = self.cfg
        overrides = methods.config_overrides(cfg.method, load_config(cfg.model))  # e.g. P-tuning's prefix
        model = load_causal_lm(cfg.model, dropout=cfg.train.dropout, config_overrides=overrides)
        return CausalLM(model), self.tokenizer

    # 3. batches: padded per batch, or packed (checked on the model: it must keep packed examples apart)
    def make_loaders(self, tokenizer: Any, model: torch.nn.Module) -> dict[str, Any]:
        from glmtune.data.packing import packing_supported
        from glmtune.data.sft import make_sft_loader
        from glmtune.models.load import pad_token_id

        cfg, train = self.cfg, self.cfg.train
        if cfg.data.packing and cfg.method.name in methods.PROMPT_LEARNING:
            raise UserError(
                f"method {cfg.method.name} puts virtual tokens before each row (peft ignores packed position ids)",
                field="data.packing",
                expected="false with prompt_tuning / p_tuning",
            )
        if cfg.data.packing and not packing_supported(model.backbone):
            raise UserError(
                f"model type '{getattr(model.config, 'model_type', '?')}' does not keep packed examples apart",
                field="data.packing",
                expected="false for this model",
            )
        self.teacher = None
        if cfg.method.distill.teacher is not None:  # token-level KD: the teacher scores every batch
            from glmtune.train.techniques.distill import LMTeacher

            self.teacher = LMTeacher(cfg, tokenizer)
        pad_id = pad_token_id(tokenizer)
        loaders = {
            "train": make_sft_loader(
                self.encoded["train"].examples,
                train.batch_size,
                pad_id,
                seed=train.seed,
                shuffle=True,
                group_by_length=train.group_by_length,
                packing_len=train.max_seq_len if cfg.data.packing else None,
            )
        }
        for name in ("validation", "test"):
            loaders[name] = make_sft_loader(self.encoded[name].examples, cfg.eval.batch_size, pad_id)
        return loaders

    def describe(self) -> list[str]:
        from glmtune.data.summary import counts_table
        from glmtune.train.continue_from import describe

        lines = describe(self.cfg) + [f"template {self.format.name} · stop ids {self.format.stop_ids()}"]
        if self.knowledge is not None:
            from glmtune.data.knowledge.retrieval import describe_record

            lines.append(describe_record(self.knowledge))
        if self.teacher is not None:
            lines.append(f"distilling from {self.cfg.method.distill.teacher} (token-level KL)")
        return lines + ["conversations per split:", counts_table(self.data.counts)]

    def size(self, split: str) -> int:
        """The conversations of ``split`` that are trained or evaluated on (the counts table's ``used``)."""
        return len(self.used[split])

    def eval_scale(self, split: str) -> float:
        """The work of ``split``'s final evaluation relative to validation's, for a time budget that timed one
        final validation evaluation: (prompt tokens + ``generate.max_new_tokens`` per conversation) of ``split``
        over the same sum for validation — generation dominates and every reply may run to its limit. Without
        generation (``eval.generation: none``), the ratio of their encoded tokens (the loss pass). 0.0 for an empty
        split; inf when validation is empty and ``split`` is not (nothing to scale from)."""
        work, reference = self._final_work(split), self._final_work("validation")
        if not work:
            return 0.0
        return work / reference if reference else math.inf

    def _final_work(self, split: str) -> int:
        if self.cfg.eval.generation == "none":
            return sum(len(e.input_ids) for e in self.encoded[split].examples)
        prompts = self._prompts(split)
        return sum(len(p) for p in prompts) + self.cfg.generate.max_new_tokens * len(prompts)

    def _prompts(self, split: str) -> list[list[int]]:
        if split not in self.prompts:
            self.prompts[split] = [
                _prompt(self.tokenizer, c, self.format, self.cfg) for c in self.used[split]
            ]
        return self.prompts[split]

    # 4. the loss of one batch: token mean over the batch's learned tokens
    def loss(
        self, model: torch.nn.Module, batch: dict[str, Any], accelerator: Any
    ) -> tuple[torch.Tensor, int]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "index", "num_tokens")}
        # The LM head runs on learned positions only where the model allows it (the teacher needs all).
        mask = None
        if self.teacher is None and accepts_learned_mask(model):
            mask = learned_mask(batch["labels"])  # [batch, seq]
            inputs["logits_to_keep"] = mask
        with accelerator.autocast():
            logits = model(**inputs).logits  # [learned, vocab] with a mask, else [batch, seq, vocab]
        if self.teacher is not None:
            from glmtune.train.techniques import distill

            kd = self.cfg.method.distill
            teacher = self.teacher.logits(inputs, accelerator)  # [batch, seq, vocab]
            loss = distill.token_loss(logits, teacher, batch["labels"], kd.temperature, kd.alpha)
        else:
            smoothing = self.cfg.train.label_smoothing
            sums, counts = token_losses(logits, batch["labels"], smoothing, mask)  # [batch], [batch]
            loss = sums.sum() / counts.sum().clamp(min=1)
        tokens = batch["num_tokens"].sum() if "num_tokens" in batch else batch["attention_mask"].sum()
        return loss, int(tokens)

    # 5. evaluation
    @torch.no_grad()
    def _loss(
        self, model: torch.nn.Module, split: str, accelerator: Any, progress: str | None = None
    ) -> float:
        """Token-mean loss over the whole (sharded) split, gathered once per example; the LM head runs on learned
        positions only where the model allows it (prompts never reach the [*, vocab] projection). ``progress``:
        a progress bar with that name."""
        from tqdm.auto import tqdm

        was_training = model.training
        model.eval()
        learned_only = accepts_learned_mask(model)
        sums_all, counts_all = [], []
        shown = progress is not None and accelerator.is_main_process
        loader = self.loaders[split]
        for batch in tqdm(
            loader, desc=f"{progress} (loss)", unit="batch", disable=not shown, dynamic_ncols=True
        ):
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
            mask = learned_mask(batch["labels"]) if learned_only else None  # [batch, seq]
            if mask is not None:
                inputs["logits_to_keep"] = mask
            with accelerator.autocast():
                logits = model(**inputs).logits  # [learned, vocab] with a mask, else [batch, seq, vocab]
            sums, counts = token_losses(logits, batch["labels"], 0.0, mask)  # [batch], [batch]
            sums, counts = accelerator.gather_for_metrics((sums, counts))
            sums_all.append(sums.cpu())
            counts_all.append(counts.cpu())
        model.train(was_training)
        if not sums_all:
            return float("nan")
        return (torch.cat(sums_all).sum() / torch.cat(counts_all).sum().clamp(min=1)).item()

    def evaluate(
        self, model: torch.nn.Module, split: str, accelerator: Any, final: bool = False
    ) -> dict[str, Any]:
        """Loss and perplexity of ``split`` (and its generation metrics when this evaluation generates), with
        progress bars named ``self.progress`` when it is set (the untuned model's evaluation, before training)."""
        from glmtune import metrics as evaluation

        progress = self.progress
        loss = self._loss(model, split, accelerator, progress)
        metrics: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if self._generates(split, final):
            rows = self._generate(accelerator.unwrap_model(model), split, accelerator, progress)
            self.rows[split] = rows
            metrics.update(
                evaluation.generation_metrics([r["output"] for r in rows], [r["reference"] for r in rows])
            )
        metrics["n"] = self.size(split)
        return metrics

    def _generates(self, split: str, final: bool) -> bool:
        """Whether this evaluation generates replies (``eval.generation``; a generation metric: always)."""
        if self.cfg.eval.generation == "none" and not self.generation_metric:
            return False
        if final:
            return True
        if split != "validation" or not self.generate_every:
            return False
        self.evaluations += 1
        return self.evaluations % self.generate_every == 0

    def _generate(
        self, model: torch.nn.Module, split: str, accelerator: Any, progress: str | None = None
    ) -> list[dict[str, Any]]:
        """A reply to every used conversation of ``split`` (shared out over processes, gathered in order)."""
        from accelerate.utils import gather_object

        conversations = self.used[split]
        mine = list(range(accelerator.process_index, len(conversations), accelerator.num_processes))
        cfg = self.cfg
        prompts = [self._prompts(split)[i] for i in mine]
        gen_cfg = generation_config(cfg, self.format.stop_ids())
        replies = generate_replies(
            model,
            self.tokenizer,
            prompts,
            gen_cfg,
            cfg.eval.batch_size,
            autocast=accelerator.autocast,
            progress=progress is not None and accelerator.is_main_process,
            desc=f"{progress} (replies)",
        )
        rows = [(i, _row(conversations[i], reply)) for i, reply in zip(mine, replies)]
        if accelerator.num_processes > 1:
            rows = gather_object(rows)
        return [row for _, row in sorted(rows, key=lambda item: item[0])]

    # 6. the run folder
    def write_start(self, run: RunDir) -> None:
        from glmtune.train.continue_from import write_lineage

        write_lineage(run, self.cfg, self.replayed)
        atomic_write_json(run.path / "data_summary.json", self.data.summary())
        if (
            self.knowledge is not None
        ):  # which knowledge base the run learned to read (checked when it is used)
            atomic_write_json(run.path / "knowledge.json", self.knowledge)

    def write_outputs(self, run: RunDir, results: dict[str, Any]) -> None:
        from glmtune import metrics as evaluation

        split = "test" if "test" in self.rows else "validation"
        if split in self.rows:
            evaluation.write_predictions(run.predictions, self.rows[split])
        columns = {k: results[k] for k in ("before", "after", "test") if k in results}
        if "after" not in columns and "validation" in results:
            columns["validation"] = results["validation"]
        print(evaluation.format_metrics_table(columns, TABLE_ROWS))


def _encode(tokenizer: Any, conversations: list[Conversation], fmt: Any, cfg: Config) -> Any:
    """``data.templates.encode_conversations`` with the run's format and settings; template errors name
    ``data.template``."""
    from glmtune.data.templates import encode_conversations

    try:
        return encode_conversations(
            tokenizer,
            conversations,
            fmt,
            max_seq_len=cfg.train.max_seq_len,
            train_on_prompt=cfg.data.train_on_prompt,
        )
    except UserError as error:
        raise as_config_field(error) from None


def _retrieve(task: SFT, cfg: Config) -> dict[str, Any] | None:
    """knowledge.kb: ``task.splits`` with passages in each last user turn, cut where a conversation would not fit
    ``train.max_seq_len``; returns what the run folder records (``knowledge.json``)."""
    from glmtune.data.knowledge.retrieval import augment_splits

    def fits(conversation: Conversation) -> bool:
        encoded = _encode(task.tokenizer, [conversation], task.format, cfg)
        return not (encoded.num_dropped or encoded.num_truncated)

    task.splits, record = augment_splits(cfg.knowledge, task.splits, fits)
    return record


def _prompt(tokenizer: Any, conversation: Conversation, fmt: Any, cfg: Config) -> list[int]:
    return prompt_ids(tokenizer, conversation.messages[:-1], conversation.tools, fmt, cfg.train.max_seq_len)


def _row(conversation: Conversation, reply: Any) -> dict[str, Any]:
    users = [m.content for m in conversation.messages[:-1] if m.role in ("user", "tool")]
    return {
        "prompt": users[-1] if users else "",
        "reference": reference_text(conversation.messages[-1]),
        "output": reply.text,
        "finish_reason": reply.finish_reason,
    }


__all__ = ["SFT"]
