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

One row never fails the others: a row whose settings cannot be built (a seed past 64 bits, a temperature the
warpers refuse) gets its error before the batch starts, a row whose probabilities turn non-finite gets its error at
that step and is padded like a finished row, and when the whole ``generate`` call fails anyway, every row that has
shown nothing yet is run again alone (so only the culprit gets the error).

Knows tokens, not HTTP: readers are ``Row``s (``serve.engine.Job`` implements them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
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

log = logging.getLogger("glmtune.serve")


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


@dataclass
class _Sampling:
    """One sampling row's own warpers and ``torch.Generator`` (seeded by its request)."""

    warpers: LogitsProcessorList
    generator: torch.Generator

    @classmethod
    def of(cls, request: RowRequest, device: torch.device) -> _Sampling | None:
        """None for a greedy row; raises for settings sampling cannot use (transformers' warpers check theirs)."""
        if not request.samples:
            return None
        warpers = LogitsProcessorList([TemperatureLogitsWarper(request.temperature)])
        if request.top_k > 0:
            warpers.append(TopKLogitsWarper(request.top_k))
        if request.top_p < 1.0:
            warpers.append(TopPLogitsWarper(request.top_p))
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(7), "little")
        return cls(warpers, torch.Generator(device=device).manual_seed(seed))


_NOT_FINITE = "sampling probabilities are not finite (temperature, top_p or the model's logits)"


class _RowSampler(LogitsProcessor):
    """Per-row sampling inside a greedy ``generate``: sampled rows become one-hot scores (see the module notes).

    A row whose probabilities are not a distribution (NaN or inf from its temperature or the model) is handed to
    ``fail`` and left alone from then on; it is checked here, not by ``torch.multinomial``, whose check on a GPU is
    a device-side assert that would end the process."""

    def __init__(self, samplings: Sequence[_Sampling | None], fail: Callable[[int, BaseException], None]):
        self.samplings, self.fail = list(samplings), fail

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids [batch, seq]; scores [batch, vocab]
        scores = scores.clone()
        checked: list[tuple[int, torch.Tensor]] = []
        for row, sampling in enumerate(self.samplings):
            if sampling is None:
                continue
            try:
                # [1, vocab]
                warped = sampling.warpers(input_ids[row : row + 1], scores[row : row + 1].float())
                probs = warped.softmax(dim=-1)[0]  # [vocab]
                usable = torch.isfinite(probs).all() & (probs.sum() > 0)  # [] (no sync with the device here)
                # a draw that cannot fail (its token is unused when the row is not usable)
                probs = torch.where(usable, probs, torch.ones_like(probs))  # [vocab]
                token = torch.multinomial(probs, 1, generator=sampling.generator)  # [1]
            except Exception as error:  # noqa: BLE001 - this row's failure, not the batch's
                self._drop(row, error)
                continue
            scores[row] = float("-inf")
            scores[row, token] = 0.0
            checked.append((row, usable))
        if checked:
            flags = torch.stack([usable for _, usable in checked]).tolist()  # one sync per step
            for (row, _), ok in zip(checked, flags):
                if not ok:
                    self._drop(row, ValueError(_NOT_FINITE))
        return scores

    def _drop(self, row: int, error: BaseException) -> None:
        self.samplings[row] = None
        self.fail(row, error)


class _RowTracker(StoppingCriteria):
    """Follows every row after every step: text to its reader, its own end, its result (see the module notes)."""

    def __init__(self, tokenizer: Any, rows: Sequence[Row], prompt_width: int, stop_ids: list[int]):
        self.tokenizer, self.rows, self.width, self.stop_ids = tokenizer, rows, prompt_width, stop_ids
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.shown = [""] * len(rows)
        self.done = [False] * len(rows)
        # A reader may want the time of its first token (the server's ``Job``: time to first token); optional.
        self.first = [getattr(row, "first_token", None) for row in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        # [batch]: the token each row just got (padding once a row is done)
        newest = input_ids[:, -1].tolist()
        for index, row in enumerate(self.rows):
            if self.done[index]:
                continue
            self.tokens[index].append(newest[index])
            if len(self.tokens[index]) == 1 and self.first[index] is not None:
                self.first[index]()
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

    def fail(self, index: int, error: BaseException) -> None:
        """End row ``index`` with ``error`` (its reader's); the others go on."""
        if not self.done[index]:
            self.done[index] = True
            self.rows[index].emit_error(error)

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

    Errors go to the rows they belong to (never raised: the caller's thread serves other batches); see the module
    notes for how one row's failure is kept from the others.
    """
    if not rows:
        return
    device = next(model.parameters()).device
    live: list[Row] = []
    samplings: list[_Sampling | None] = []
    for row in rows:
        try:
            sampling = _Sampling.of(row.request, device)
        except Exception as error:  # noqa: BLE001 - this row's settings, not the batch's
            row.emit_error(error)
            continue
        live.append(row)
        samplings.append(sampling)
    if not live:
        return
    requests = [row.request for row in live]
    # [batch, width] each
    input_ids, attention_mask = left_padded([r.prompt_ids for r in requests], pad_id, device)
    tracker = _RowTracker(tokenizer, live, input_ids.shape[1], stop_ids)
    longest = max(r.max_new_tokens for r in requests)
    # Greedy for transformers; sampling rows are decided by _RowSampler (the stop ids end rows; we cut stop strings).
    config = hf_generation_config(
        tokenizer, GenerationConfig(max_new_tokens=longest, stop_ids=stop_ids), stop_ids
    )
    sampler = [_RowSampler(samplings, tracker.fail)] if any(s is not None for s in samplings) else []
    try:
        with torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=LogitsProcessorList(sampler),
                stopping_criteria=StoppingCriteriaList([tracker]),
            )
    except Exception as error:  # noqa: BLE001 - handed to the waiting readers
        _after_failure(model, tokenizer, tracker, error, stop_ids, pad_id)
        return
    for index in range(len(live)):  # rows the model's own length limit ended
        if not live[index].is_cancelled():
            tracker.complete(index)


def _after_failure(
    model: Any, tokenizer: Any, tracker: _RowTracker, error: Exception, stop_ids: list[int], pad_id: int
) -> None:
    """The batch's ``generate`` raised: a row alone gets the error; in a batch, each unfinished row that has shown
    nothing yet runs again alone (the one that broke the batch fails again, by itself), the rest get the error."""
    unfinished = [index for index, done in enumerate(tracker.done) if not done]
    if len(tracker.rows) > 1 and unfinished:
        log.warning("a batch of %d failed (%s); running its rows one by one", len(tracker.rows), error)
    for index in unfinished:
        tracker.done[index] = True
        row = tracker.rows[index]
        if len(tracker.rows) > 1 and not tracker.shown[index] and not row.is_cancelled():
            generate_rows(model, tokenizer, [row], stop_ids, pad_id)
        else:
            row.emit_error(error)


__all__ = ["Row", "RowRequest", "generate_rows"]
