"""Many greedy replies at once: continuous batching over one KV cache (what SFT evaluation and ``predict`` run).

Contract: ``generate_many(model, tokenizer, prompts_ids, cfg, batch_size)`` returns the same ``Generated`` replies,
in the same order, as ``generate.generate`` on each prompt alone. What it saves, measured in
``benchmarks/sft_eval.py``:

* **finished rows leave the batch.** ``model.generate`` keeps computing a row after its stop id until every row of
  the batch has stopped (one untuned reply running to ``max_new_tokens`` holds 31 finished rows in the matmuls);
  here a row is dropped from the batch and its KV cache the step it stops;
* **freed slots are refilled** with the next prompts (prefilled on their own, then joined to the cache left-padded),
  so ``batch_size`` rows stay busy until the prompts run out, instead of one ``generate`` call per batch each
  waiting for its longest reply; left columns that only padding uses any more are cut from the cache;
* prompts are taken longest first (little padding in each prefill), and each prefill runs the LM head on the last
  position only.

Every row keeps its own positions (counted over its real tokens) and its attention mask, so its tokens do not depend
on which rows share its batch. Greedy decoding (with ``repetition_penalty`` over the row's own prompt and reply,
as ``generate`` on that prompt alone applies it) and stop ids only: sampling, stop strings, a model whose
``generation_config`` changes the scores (``no_repeat_ngram_size``, ``suppress_tokens``, ...), prompt-learning
adapters and models that are not transformers' own classes go through ``generate.generate`` in length-sorted
batches instead (the previous path), so every configuration still works.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from glmtune.infer.generate import (
    Generated,
    GenerationConfig,
    check_prompts,
    finish,
    generate,
    left_padded,
    resolve_stop_ids,
)

# generation_config fields whose non-default values change greedy scores (transformers' logits processors)
_SCORE_FIELDS = {
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "forced_decoder_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1, 1.0),
    "encoder_repetition_penalty": (None, 1, 1.0),
    "watermarking_config": (None,),
}


def _base(model: Any) -> Any:
    """The transformers model under glmtune's ``CausalLM`` and a peft wrapper."""
    backbone = getattr(model, "backbone", model)
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def supported(model: Any, cfg: GenerationConfig) -> bool:
    """Whether continuous batching gives exactly what ``generate`` gives for ``model`` and ``cfg``."""
    if cfg.do_sample or cfg.stop:
        return False
    backbone = getattr(model, "backbone", model)
    peft_config = getattr(backbone, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False  # virtual tokens before each row: peft's own generate places them
    base = _base(model)
    config = getattr(base, "config", None)
    if not type(base).__module__.startswith("transformers.models.") or config is None:
        return False  # native ports and remote code prepare their own generation inputs
    if getattr(config, "is_encoder_decoder", False):
        return False
    if "position_ids" not in inspect.signature(type(base).forward).parameters:
        return False
    defaults = getattr(base, "generation_config", None)
    for name, neutral in _SCORE_FIELDS.items():
        value = getattr(defaults, name, None)
        if value not in neutral and not (isinstance(value, (list, tuple, dict)) and not value):
            return False
    return True


def generate_many(
    model: Any,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    batch_size: int,
    *,
    on_done: Callable[[int], None] | None = None,
) -> list[Generated]:
    """Replies to ``prompts_ids``, in order, at most ``batch_size`` rows computed at a time (call it under
    ``torch.no_grad()`` and the caller's autocast, model in eval mode). ``on_done(n)``: ``n`` more replies are
    finished (a progress bar)."""
    if not prompts_ids:
        return []
    if not supported(model, cfg):
        return generate_in_batches(model, tokenizer, prompts_ids, cfg, batch_size, on_done)
    return _Decoder(model, tokenizer, cfg, batch_size, on_done).run(prompts_ids)


def generate_in_batches(
    model: Any,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    batch_size: int,
    on_done: Callable[[int], None] | None = None,
) -> list[Generated]:
    """One ``generate.generate`` (transformers' ``model.generate``) per batch of ``batch_size`` prompts, longest
    first (little padding): every case ``generate_many`` does not decode itself, and its reference."""
    order = sorted(range(len(prompts_ids)), key=lambda i: -len(prompts_ids[i]))
    replies: list[Any] = [None] * len(prompts_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, reply in zip(chunk, generate(model, tokenizer, [prompts_ids[i] for i in chunk], cfg)):
            replies[index] = reply
        if on_done is not None:
            on_done(len(chunk))
    return replies


class _Decoder:
    """The rows being generated: their prompt indices, KV cache, attention mask, positions and tokens so far."""

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerationConfig, batch_size: int, on_done: Any):
        from glmtune.models.load import pad_token_id

        self.model, self.tokenizer, self.cfg, self.batch_size, self.on_done = (
            model,
            tokenizer,
            cfg,
            batch_size,
            on_done,
        )
        self.stop_ids = resolve_stop_ids(tokenizer, cfg)
        self.pad_id = pad_token_id(tokenizer)
        base = _base(model)
        self.device = next(model.parameters()).device
        self.last_only = "logits_to_keep" in inspect.signature(type(base).forward).parameters
        self.rows: list[int] = []  # prompt index of each active row
        self.tokens: list[list[int]] = []  # generated ids of each active row
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # [rows, width]
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # [rows] next token's position
        self.seen: torch.Tensor | None = None  # [rows, vocab] bool: ids a repetition penalty applies to
        self.mergeable = True  # a plain DynamicCache: new rows can join it (else: a new wave when it empties)

    def run(self, prompts_ids: Sequence[Sequence[int]]) -> list[Generated]:
        check_prompts(prompts_ids)
        self.prompts = prompts_ids
        pending = deque(sorted(range(len(prompts_ids)), key=lambda i: -len(prompts_ids[i])))
        self.replies: list[Any] = [None] * len(prompts_ids)
        refill_at = max(1, self.batch_size // 4)  # a prefill costs a forward pass: join a few rows at once
        while pending or self.rows:
            free = self.batch_size - len(self.rows)
            if pending and (not self.rows or (self.mergeable and free >= min(refill_at, len(pending)))):
                joining = [pending.popleft() for _ in range(min(free, len(pending)))]
                self._retire(self._choose(self._prefill(joining), len(self.rows) - len(joining)))
                continue
            self._retire(self._choose(self._step(), 0))
        return self.replies

    # ------------------------------------------------------------------ forward passes

    def _prefill(self, joining: list[int]) -> torch.Tensor:
        """Run the new prompts alone, then join their cache to the running one; returns their next-token logits."""
        from transformers.cache_utils import Cache, DynamicCache

        prompts = [self.prompts[i] for i in joining]
        input_ids, mask = left_padded(prompts, self.pad_id, self.device)  # [new, width]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [new, width]
        kwargs = {"logits_to_keep": 1} if self.last_only else {}
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
        )
        cache = out.past_key_values
        if not isinstance(cache, Cache):
            raise TypeError(f"{type(cache).__name__} is not a transformers Cache")
        self.mergeable = type(cache) is DynamicCache and not any(cache.is_sliding)
        logits = out.logits[:, -1].float()  # [new, vocab]
        if self.cfg.repetition_penalty != 1.0:  # penalised: the ids of the row's own prompt, then its reply
            seen = _real(input_ids, mask, logits.shape[-1])  # [new, vocab]
            self.seen = seen if self.seen is None else torch.cat([self.seen, seen])
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.cache, self.mask = self._join(cache, mask) if self.rows else (cache, mask)
        self.rows += joining
        self.tokens += [[] for _ in joining]
        return logits

    def _join(self, new_cache: Any, new_mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The running cache and the new rows' in one, both left-padded to the wider of the two."""
        from transformers.cache_utils import DynamicCache

        width = max(self.mask.shape[1], new_mask.shape[1])
        layers = [
            tuple(torch.cat([_pad_left(a, width), _pad_left(b, width)]) for a, b in zip(old[:2], new[:2]))
            for old, new in zip(self.cache, new_cache)
        ]
        mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(new_mask, width, dim=1)])
        return DynamicCache(ddp_cache_data=layers), mask

    def _step(self) -> torch.Tensor:
        """One token for every active row; returns the next-token logits [rows, vocab]."""
        last = torch.tensor([t[-1] for t in self.tokens], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        out = self.model(
            input_ids=last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.positions = self.positions + 1
        return out.logits[:, -1].float()

    # ------------------------------------------------------------------ choosing and retiring

    def _choose(self, logits: torch.Tensor, first: int) -> list[int]:
        """Greedy tokens for rows ``first..`` from their logits; returns the rows that are now finished."""
        if self.seen is not None:
            seen = self.seen[first:]  # [n, vocab]
            penalty = self.cfg.repetition_penalty
            logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
        chosen = logits.argmax(dim=-1).tolist()  # [n]
        if self.seen is not None:
            index = torch.tensor(chosen, device=self.device)
            self.seen[first:].scatter_(1, index[:, None], True)
        done = []
        for row, token in enumerate(chosen, start=first):
            self.tokens[row].append(token)
            if token in self.stop_ids or len(self.tokens[row]) >= self.cfg.max_new_tokens:
                done.append(row)
        return done

    def _retire(self, done: list[int]) -> None:
        """Hand the finished rows their replies and drop them from the batch (and their dead left columns)."""
        if not done:
            return
        for row in done:
            ids = self.tokens[row]
            self.replies[self.rows[row]] = finish(
                self.tokenizer, ids, self.stop_ids, self.cfg.stop, self.cfg.max_new_tokens
            )
        if self.on_done is not None:
            self.on_done(len(done))
        finished = set(done)
        keep = [row for row in range(len(self.rows)) if row not in finished]
        self.rows = [self.rows[row] for row in keep]
        self.tokens = [self.tokens[row] for row in keep]
        if not keep:
            self.cache, self.seen = None, None
            self.mask = self.mask[:0, :0]
            self.positions = self.positions[:0]
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.seen is not None:
            self.seen = self.seen[index]
        self.cache.batch_select_indices(index)
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # the first column a remaining row still uses
        if start > 0 and self.mergeable:
            self._trim(start)

    def _trim(self, start: int) -> None:
        from transformers.cache_utils import DynamicCache

        layers = [(keys[:, :, start:], values[:, :, start:]) for keys, values, *_ in self.cache]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = self.mask[:, start:]


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """``tensor`` with zeros before its columns along ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _real(input_ids: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] bool: the ids each row's real (unmasked) prompt tokens hold."""
    real = torch.zeros((input_ids.shape[0], vocab), dtype=torch.long, device=input_ids.device)
    real.scatter_add_(1, input_ids, mask.long())
    return real > 0


__all__ = ["generate_in_batches", "generate_many", "supported"]
