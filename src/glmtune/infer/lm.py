"""Use a trained SFT run (or an untuned model): load it back, turn prompts into replies.

The generation counterpart of ``classify``: ``glmtune predict`` and ``glmtune chat`` load through here, and the
SFT task generates its validation/test replies with the same ``generate_replies``. Runs on one process.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmtune import methods
from glmtune.core.config import CAUSAL_TASKS, Config
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir
from glmtune.data.conversation import Conversation
from glmtune.data.prompt_file import read_prompts


def as_config_field(error: UserError) -> UserError:
    """data.templates names its argument ``template``; in a run that is the config's ``data.template``."""
    if error.field != "template":
        return error
    return UserError(
        error.message, file=error.file, line=error.line, field="data.template", expected=error.expected
    )


def resolve_template(tokenizer: Any, template: str, *splits: list[Conversation]) -> Any:
    """``data.templates.resolve_for``: the format for every conversation of ``splits`` (tools-aware), its errors
    naming the config field ``data.template``."""
    from glmtune.data import templates

    try:
        return templates.resolve_for(tokenizer, template, *splits)
    except UserError as error:
        raise as_config_field(error) from None


def reference_text(message: Any) -> str:
    """What a reply is scored against: its text, or its tool calls as JSON lines."""
    if message.tool_calls:
        calls = [json.dumps(call["function"], ensure_ascii=False) for call in message.tool_calls]
        return "\n".join(([message.content] if message.content else []) + calls)
    return message.content


def generation_config(cfg: Config, stop_ids: list[int]) -> Any:
    from glmtune.infer.generate import GenerationConfig

    return GenerationConfig(**dataclasses.asdict(cfg.generate), stop_ids=stop_ids)


def generate_replies(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    gen_cfg: Any,
    batch_size: int,
    *,
    autocast: Any = nullcontext,
    progress: bool = False,
    desc: str = "generate",
) -> list[Any]:
    """``generate.Generated`` replies for token-id prompts, in order, ``batch_size`` rows at a time.

    Greedy replies go through ``continuous.generate_many`` (finished rows leave the batch, freed rows take the next
    prompt); anything else through one ``model.generate`` per length-sorted batch. Either way a reply equals the
    one its prompt gets alone."""
    from tqdm.auto import tqdm

    from glmtune.infer.continuous import generate_many

    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
    try:
        with torch.no_grad(), autocast():
            return generate_many(model, tokenizer, prompts, gen_cfg, batch_size, on_done=bar.update)
    finally:
        bar.close()
        model.train(was_training)


def prompt_ids(tokenizer: Any, messages: list[Any], tools: Any, template: Any, max_len: int) -> list[int]:
    """The generation prompt for ``messages`` in ``template`` (a name, or a resolved format: a run's own); an
    over-long prompt keeps its last ``max_len`` tokens."""
    from glmtune.data.templates import encode_prompt

    ids = encode_prompt(tokenizer, messages, template, tools)
    return ids[-max_len:]


# =========================================================================== using a trained run


@dataclass
class LoadedLM:
    """A causal LM ready to generate: the run's config (or defaults around a bare model), model, tokenizer."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: Any
    format: Any  # the resolved chat template (stop ids, parse_reply)
    run: RunDir | None = None
    retrieval: Any = None  # knowledge.kb: data.knowledge.retrieval.Retrieval, else None

    def with_knowledge(self, messages: list[Any], tools: Any = None) -> list[Any]:
        """``messages`` with the passages retrieved for the last user turn (a run trained with ``knowledge.kb``),
        as few cut as needed for the prompt to fit ``train.max_seq_len``; as they are otherwise."""
        if self.retrieval is None:
            return messages
        limit = self.cfg.train.max_seq_len

        def fits(candidate: list[Any]) -> bool:
            return len(prompt_ids(self.tokenizer, candidate, tools, self.format, 10**9)) <= limit

        return self.retrieval.augment_messages(messages, fits)[0]

    def autocast(self) -> Any:
        from glmtune.models.precision import mixed_precision

        device = next(self.model.parameters()).device
        enabled = mixed_precision(self.cfg.train) == "bf16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _place(model: torch.nn.Module) -> torch.nn.Module:
    return model.to("cuda") if torch.cuda.is_available() else model


def load_run(path: str | Path, *, full_precision: bool = False) -> LoadedLM:
    """Base model + a finished SFT run's trained weights, in eval mode (``full_precision``: the base unquantized,
    whatever ``model.quantization`` the run trained with — what ``export --merge`` folds a QLoRA adapter into)."""
    from glmtune.core import config as config_mod
    from glmtune.models.load import load_config

    run = RunDir(path)
    run.check(need_weights=True)
    cfg = config_mod.load(run.config)
    if cfg.task not in CAUSAL_TASKS:
        raise UserError(f"a {cfg.task} run, not an sft run", file=str(run.path), expected="an sft run folder")
    if full_precision:
        cfg = config_mod.without_quantization(cfg)
    overrides = methods.config_overrides(cfg.method, load_config(run_base(cfg.model)))
    model, tokenizer = load_model_or_run(cfg.model, config_overrides=overrides)
    methods.load(model, cfg.method, run)
    fmt = resolve_template(tokenizer, cfg.data.template)
    return LoadedLM(cfg, _place(model.eval()), tokenizer, fmt, run, open_knowledge(run, cfg))


def open_knowledge(run: RunDir, cfg: Config) -> Any:
    """The run's knowledge base (``knowledge.kb``), checked to be the one it was trained with."""
    from glmtune.core.runs import read_json
    from glmtune.data.knowledge.retrieval import open_retrieval

    record = run.path / "knowledge.json"
    return open_retrieval(cfg.knowledge, read_json(record)["kb_id"] if record.is_file() else None)


def _is_run(name_or_path: str) -> bool:
    return (Path(name_or_path) / "glmtune.json").is_file()


def run_base(model_cfg: Any) -> Any:
    """The ``model`` section of the HF model a run folder given as ``model.name_or_path`` starts from (followed down
    a chain of runs: a preference run from an SFT run); a model's own section as is."""
    from glmtune.core import config as config_mod

    while _is_run(model_cfg.name_or_path):
        model_cfg = config_mod.load(RunDir(model_cfg.name_or_path).config).model
    return model_cfg


def load_model_or_run(
    model_cfg: Any, *, dropout: float | None = None, config_overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, Any]:
    """``models.causal.load_language_model``, or, when ``model.name_or_path`` is a finished causal LM run folder
    (``runs/my-sft``), that run's model with its trained weights folded in — a LoRA adapter merged into the base
    (``merge_and_unload``) — so a run continuing from it trains its own weights on top (and ``load_run`` rebuilds
    the same chain). The run's own model settings (dtype, quantization, dropout) apply, not ``dropout``."""
    from glmtune.models.causal import load_language_model

    if not _is_run(model_cfg.name_or_path):
        return load_language_model(model_cfg, dropout=dropout, config_overrides=config_overrides)
    parent = load_run(model_cfg.name_or_path)
    if (
        config_overrides
        or parent.cfg.method.name in methods.PROMPT_LEARNING
        or parent.cfg.method.name == "ptuning"
    ):
        raise UserError(
            "a run with virtual tokens (prompt tuning, P-tuning) cannot be folded into a model to continue from, "
            "nor can a P-tuning v2 run start from a run",
            field="model.name_or_path",
            expected="a finished lora, full or freeze run (or a model)",
        )
    model = parent.model.cpu()
    if parent.cfg.method.name in methods.PEFT_METHODS:
        model.backbone = model.backbone.merge_and_unload()
    return model, parent.tokenizer


def load_base(name_or_path: str, template: str = "auto") -> LoadedLM:
    """An untuned model (a built-in name or an HF folder) to chat with."""
    from glmtune.core import config as config_mod
    from glmtune.models.causal import load_language_model

    cfg = config_mod.from_dict(
        {"task": "sft", "model": {"name_or_path": name_or_path}, "data": {"template": template}}
    )
    model, tokenizer = load_language_model(cfg.model)
    fmt = resolve_template(tokenizer, template)
    return LoadedLM(cfg, _place(model.eval()), tokenizer, fmt)


def load(run_or_model: str, template: str | None = None) -> LoadedLM:
    """A run folder (has glmtune.json) or a model name/folder."""
    if (Path(run_or_model) / "glmtune.json").is_file():
        loaded = load_run(run_or_model)
        if template is not None and template != loaded.cfg.data.template:
            raise UserError(
                "a run chats with the template it was trained with",
                field="--template",
                expected=f"no --template, or {loaded.cfg.data.template}",
            )
        return loaded
    return load_base(run_or_model, template or "auto")


def reply_all(
    loaded: LoadedLM, prompts: list[Conversation], *, progress: bool = False
) -> list[dict[str, Any]]:
    """One row per prompt: the prompt (its last turn), the reply text, why it ended and the parsed reply
    (``message``: ``{"content"}``, or a tool call ``{"name", "parameters"}`` for templates that have them)."""
    cfg = loaded.cfg
    ids = [
        prompt_ids(
            loaded.tokenizer,
            loaded.with_knowledge(p.messages, p.tools),
            p.tools,
            loaded.format,
            cfg.train.max_seq_len,
        )
        for p in prompts
    ]
    gen_cfg = generation_config(cfg, loaded.format.stop_ids())
    replies = generate_replies(
        loaded.model,
        loaded.tokenizer,
        ids,
        gen_cfg,
        cfg.eval.batch_size,
        autocast=loaded.autocast,
        progress=progress,
    )
    return [
        {
            "prompt": prompt.messages[-1].content,
            "output": reply.text,
            "finish_reason": reply.finish_reason,
            "message": loaded.format.parse_reply(reply.text),
        }
        for prompt, reply in zip(prompts, replies)
    ]


def encode_for_eval(loaded: LoadedLM, conversations: list[Conversation]) -> Any:
    """The run's encoding of ``conversations`` (its format, ``max_seq_len``, ``train_on_prompt``): the ones that fit
    (``kept``), and how many were truncated or dropped, as training counts them."""
    from glmtune.data.templates import encode_conversations

    cfg = loaded.cfg
    return encode_conversations(
        loaded.tokenizer,
        conversations,
        loaded.format,
        max_seq_len=cfg.train.max_seq_len,
        train_on_prompt=cfg.data.train_on_prompt,
    )


@torch.no_grad()
def conversation_loss(loaded: LoadedLM, conversations: list[Conversation], encoded: Any = None) -> float:
    """Token-mean next-token loss over the learned tokens of every conversation that fits ``max_seq_len`` (the LM
    head on learned positions only where the model allows it, as the SFT task evaluates); ``encoded``: their
    ``encode_for_eval``, when already made."""
    from glmtune.data.sft import make_sft_loader
    from glmtune.models.causal import accepts_learned_mask, learned_mask, token_losses
    from glmtune.models.load import pad_token_id

    encoded = encoded if encoded is not None else encode_for_eval(loaded, conversations)
    loader = make_sft_loader(encoded.examples, loaded.cfg.eval.batch_size, pad_token_id(loaded.tokenizer))
    device = next(loaded.model.parameters()).device
    learned_only = accepts_learned_mask(loaded.model)
    total, count = 0.0, 0
    for batch in loader:
        labels = batch["labels"].to(device)
        inputs = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }
        mask = learned_mask(labels) if learned_only else None  # [batch, seq]
        if mask is not None:
            inputs["logits_to_keep"] = mask
        with loaded.autocast():
            logits = loaded.model(**inputs).logits  # [learned, vocab] with a mask, else [batch, seq, vocab]
        sums, counts = token_losses(logits, labels, 0.0, mask)  # [batch], [batch]
        total, count = total + sums.sum().item(), count + int(counts.sum())
    return total / count if count else float("nan")


def _with_knowledge(loaded: LoadedLM, conversations: list[Conversation]) -> list[Conversation]:
    """Whole conversations with their passages, cut to fit as training did (the same ``fits``)."""
    if loaded.retrieval is None:
        return conversations

    def fits(conversation: Conversation) -> bool:
        encoded = encode_for_eval(loaded, [conversation])
        return not (encoded.num_dropped or encoded.num_truncated)

    return loaded.retrieval.augment(conversations, fits)[0]


def evaluate_conversations(
    loaded: LoadedLM, conversations: list[Conversation], *, progress: bool = True, counts: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Loss, perplexity and generation metrics of a run on the conversations that fit its ``max_seq_len`` (the
    last reply is the reference; ``n`` counts them), and one prediction row (prompt, reference, output) each.
    ``counts``: a ``data.summary.SplitCounts`` that gets what was truncated and dropped, as training counts."""
    import math

    from glmtune import metrics as evaluation

    conversations = _with_knowledge(loaded, conversations)
    encoded = encode_for_eval(loaded, conversations)
    if counts is not None:
        counts.encoded(encoded.num_truncated, encoded.num_dropped, loaded.cfg.train.max_seq_len)
    used = [conversations[i] for i in encoded.kept]
    loss = conversation_loss(loaded, used, encoded)
    prompts = [Conversation(c.messages[:-1], c.tools, c.line, c.source) for c in used]
    rows = reply_all(loaded, prompts, progress=progress)
    for row, conversation in zip(rows, used):
        row["reference"] = reference_text(conversation.messages[-1])
    metrics: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if rows:
        outputs, references = [r["output"] for r in rows], [r["reference"] for r in rows]
        metrics.update(evaluation.generation_metrics(outputs, references))
    metrics["n"] = len(used)
    return metrics, rows


__all__ = [
    "LoadedLM",
    "as_config_field",
    "conversation_loss",
    "encode_for_eval",
    "evaluate_conversations",
    "generate_replies",
    "generation_config",
    "load",
    "load_base",
    "load_model_or_run",
    "load_run",
    "open_knowledge",
    "prompt_ids",
    "read_prompts",
    "reference_text",
    "reply_all",
    "resolve_template",
    "run_base",
]
