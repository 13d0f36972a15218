"""One ``model.generate`` call over requests that each want something different: the server's batch step.

``generate.generate`` batches prompts that share one ``GenerationConfig``. A server batches whatever requests are
waiting, and each brings its own ``max_tokens``, ``temperature``, ``top_p``, ``seed``, stop strings and its own
reader (streaming or not, possibly gone). Two transformers hooks carry the differences, so the loop, the KV cache
and the left padding stay transformers' (and ``generate.left_padded``):

* ``_RowSampler`` (a ``LogitsProcessor``): each sampling row is tempered / top-k / top-p filtered by transformers'
  own warpers and sampled with *its own* ``torch.Generator`` (seeded by the request), then its scores are made
  one-hot; the call itself runs greedy, so argmax picks exactly that token. Greedy rows are left alone. A seeded
  request therefore draws the same tokens whatever else shares the batch.
* ``_RowTracker`` (a ``StoppingCriteria``, the hook transformers calls after every step with every row's ids):
  it hands each row's new text to its reader, ends a row at its own ``max_tokens``, stop string or stop id, or
  when its reader cancelled, and delivers the row's final ``generate.finish`` result at once, not when the
  batch ends. transformers pads finished rows and stops when every row is done.

Knows tokens, not HTTP: readers are ``Row``s (``serve.engine.Job`` implements them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from glmtune.infer.generate import (
    Generated,
    GenerationConfig,
    finish,
    hf_generation_config,
    left_padded,
    visible_text,
)


@dataclass
class RowRequest:
    """What one request asks of the batch. ``temperature`` 0 is greedy; a sampling row without ``seed`` gets a
    random one."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        return self.temperature > 0


class Row(Protocol):
    """A reader of one row: its request, where its text and result go, whether it still wants them."""

    request: RowRequest
    wants_text: bool  # stream text pieces as they come (else only the final result)

    def emit_text(self, text: str) -> None: ...

    def emit_done(self, result: Generated) -> None: ...

    def emit_error(self, error: BaseException) -> None: ...

    def is_cancelled(self) -> bool: ...


class _RowSampler(LogitsProcessor):
    """Per-row sampling inside a greedy ``generate``: sampled rows become one-hot scores (see the module notes)."""

    def __init__(self, requests: Sequence[RowRequest], device: torch.device):
        self.requests = requests
        self.generators: list[torch.Generator | None] = []
        for request in requests:
            if not request.samples:
                self.generators.append(None)
                continue
            seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(7), "little")
            self.generators.append(torch.Generator(device=device).manual_seed(seed))
        self.warpers = [self._warpers(request) for request in requests]

    @staticmethod
    def _warpers(request: RowRequest) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if request.samples:
            warpers.append(TemperatureLogitsWarper(request.temperature))
            if request.top_k > 0:
                warpers.append(TopKLogitsWarper(request.top_k))
            if request.top_p < 1.0:
                warpers.append(TopPLogitsWarper(request.top_p))
        return warpers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids [batch, seq]; scores [batch, vocab]
        scores = scores.clone()
        for row, generator in enumerate(self.generators):
            if generator is None:
                continue
            warped = self.warpers[row](input_ids[row : row + 1], scores[row : row + 1].float())  # [1, vocab]
            probs = warped.softmax(dim=-1)  # [1, vocab]
            token = torch.multinomial(probs[0], 1, generator=generator)  # [1]
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class _RowTracker(StoppingCriteria):
    """Follows every row after every step: text to its reader, its own end, its result (see the module notes)."""

    def __init__(self, tokenizer: Any, rows: Sequence[Row], prompt_width: int, stop_ids: list[int]):
        self.tokenizer, self.rows, self.width, self.stop_ids = tokenizer, rows, prompt_width, stop_ids
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.shown = [""] * len(rows)
        self.done = [False] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # [batch]: the token each row just got (padding once a row is done)
        newest = input_ids[:, -1].tolist()
        for index, row in enumerate(self.rows):
            if self.done[index]:
                continue
            self.tokens[index].append(newest[index])
            if row.is_cancelled():
                self.done[index] = True
                continue
            request, tokens = row.request, self.tokens[index]
            # Decoding every row at every step costs O(length) each time: only when a stop string may end it.
            ended = newest[index] in self.stop_ids or len(tokens) >= request.max_new_tokens
            if not ended and request.stop:
                text = self.tokenizer.decode(
                    tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                ended = any(stop in text for stop in request.stop)
            if ended:
                self.complete(index)
            elif row.wants_text:
                self._show(
                    index, visible_text(self.tokenizer, self.tokens[index], self.stop_ids, request.stop)
                )
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _show(self, index: int, visible: str) -> None:
        shown = self.shown[index]
        if len(visible) > len(shown) and visible.startswith(shown):
            self.rows[index].emit_text(visible[len(shown) :])
            self.shown[index] = visible

    def complete(self, index: int) -> None:
        """End row ``index``: the rest of its text, then its result (``generate.finish`` of what it has)."""
        if self.done[index]:
            return
        self.done[index] = True
        row = self.rows[index]
        request = row.request
        result = finish(
            self.tokenizer, self.tokens[index], self.stop_ids, request.stop, request.max_new_tokens
        )
        if row.wants_text:
            self._show(index, result.text)
        row.emit_done(result)


def generate_rows(model: Any, tokenizer: Any, rows: Sequence[Row], stop_ids: list[int], pad_id: int) -> None:
    """Generate every row's reply in one left-padded batch; results and text go to the rows as they come.

    Errors go to the rows that had not finished (never raised: the caller's thread serves other batches).
    """
    if not rows:
        return
    device = next(model.parameters()).device
    requests = [row.request for row in rows]
    # [batch, width] each
    input_ids, attention_mask = left_padded([r.prompt_ids for r in requests], pad_id, device)
    tracker = _RowTracker(tokenizer, rows, input_ids.shape[1], stop_ids)
    longest = max(r.max_new_tokens for r in requests)
    # Greedy for transformers; sampling rows are decided by _RowSampler (the stop ids end rows; we cut stop strings).
    config = hf_generation_config(
        tokenizer, GenerationConfig(max_new_tokens=longest, stop_ids=stop_ids), stop_ids
    )
    processors = LogitsProcessorList(
        [_RowSampler(requests, device)] if any(r.samples for r in requests) else []
    )
    try:
        with torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([tracker]),
            )
    except Exception as error:  # noqa: BLE001 - handed to the waiting readers
        for index, row in enumerate(rows):
            if not tracker.done[index]:
                tracker.done[index] = True
                row.emit_error(error)
        return
    for index in range(len(rows)):  # rows the model's own length limit ended
        if not rows[index].is_cancelled():
            tracker.complete(index)


__all__ = ["Row", "RowRequest", "generate_rows"]
