"""The generation engine: token ids in, replies out. It knows tokens, not HTTP (``serve/`` and ``chat`` wrap it).

Generation itself is transformers' ``model.generate``. This module adds what every caller needs around it:

* batches of prompts of different lengths, padded on the **left** (so every row's next token follows its own
  prompt) with an attention mask; the result of a row does not depend on what else is in the batch;
* stop ids (the template's end-of-turn token and EOS: ``data.templates.stop_ids``) and stop strings, with
  the stop string cut from the text (transformers' ``stop_strings`` ends generation early; the cut is ours,
  so it is exact whatever the tokenizer);
* ``finish_reason``: ``"stop"`` (a stop id or stop string ended the reply) or ``"length"`` (``max_new_tokens``);
* streaming: ``stream`` runs the same generation in a thread and yields text pieces as tokens arrive; the
  pieces always concatenate to the non-streaming text (a piece that could be the start of a stop string, or
  half of a multi-byte character, is held back until it is clear);
* sampling with a seed, under a forked RNG so generating in the middle of training moves no dropout mask.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.generation import BaseStreamer, StoppingCriteria

from glmtune.core.errors import UserError

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationConfig:
    """How to generate. ``stop_ids`` empty → the tokenizer's EOS; ``top_k=0`` and ``top_p=1`` turn those off."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop strings, cut from the text
    stop_ids: list[int] = field(default_factory=list)  # stop token ids (data.templates.stop_ids)
    seed: int | None = None  # sampling seed; None draws from the current RNG

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, value: Any, expected: str) -> None:
            if not ok:
                raise UserError(f"got {value!r}", field=f"generate.{name}", expected=expected)

        check(
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
            "max_new_tokens",
            self.max_new_tokens,
            "a positive integer",
        )
        check(self.temperature > 0, "temperature", self.temperature, "a number > 0")
        check(0 < self.top_p <= 1, "top_p", self.top_p, "a number in (0, 1]")
        check(
            isinstance(self.top_k, int) and self.top_k >= 0, "top_k", self.top_k, "an integer >= 0 (0: off)"
        )
        check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "a number > 0")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "non-empty strings")


@dataclass
class Generated:
    """One reply: its text (stop string or stop token removed), the generated ids (with the stop token, if one
    ended it; up to the token that completed a stop string) and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason


# --------------------------------------------------------------------------- shared pieces


def resolve_stop_ids(tokenizer: Any, cfg: GenerationConfig) -> list[int]:
    """``cfg.stop_ids`` without repeats, else the tokenizer's EOS."""
    if cfg.stop_ids:
        return list(dict.fromkeys(int(i) for i in cfg.stop_ids))
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError(
            "no stop ids given and the tokenizer has no EOS token",
            field="generate.stop_ids",
            expected="stop ids",
        )
    return [eos]


def hf_generation_config(tokenizer: Any, cfg: GenerationConfig, stop_ids: list[int]):
    """transformers' GenerationConfig with every field we rely on set (the model's defaults fill only the rest)."""
    from transformers import GenerationConfig as HFGenerationConfig

    from glmtune.models.load import pad_token_id

    sampling = (
        {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k} if cfg.do_sample else {}
    )
    return HFGenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        repetition_penalty=cfg.repetition_penalty,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id(tokenizer),
        stop_strings=list(cfg.stop) or None,
        **sampling,
    )


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _first_stop_string(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def finish(
    tokenizer: Any,
    generated: Sequence[int],
    stop_ids: Sequence[int],
    stops: Sequence[str],
    max_new_tokens: int,
) -> Generated:
    """The reply in ``generated`` (ids after the prompt; padding after a stop is ignored): cut at the first stop
    id or stop string, whichever comes first. Used by both ``generate`` and ``stream``, so they agree."""
    ids = list(generated)
    stop_at = next((k for k, token in enumerate(ids) if token in stop_ids), None)
    body = ids if stop_at is None else ids[:stop_at]
    text = _decode(tokenizer, body)
    cut = _first_stop_string(text, stops) if stops else None
    if cut is not None:
        # the fewest tokens whose text contains the stop string (containment only grows with more tokens)
        low, high = 1, len(body)
        while low < high:
            middle = (low + high) // 2
            if _first_stop_string(_decode(tokenizer, body[:middle]), stops) is None:
                low = middle + 1
            else:
                high = middle
        return Generated(text[:cut], body[:low], "stop")
    if stop_at is not None:
        return Generated(text, ids[: stop_at + 1], "stop")
    # Cut off mid-character by max_new_tokens: no trailing U+FFFD half character in the text.
    return Generated(text.rstrip("\ufffd"), ids[:max_new_tokens], "length")


def visible_text(tokenizer: Any, tokens: Sequence[int], stop_ids: Sequence[int], stops: Sequence[str]) -> str:
    """The text of ``tokens`` (ids generated so far) that can be shown now: up to a stop id or stop string, not a
    possible start of a stop string, not a half character. Streaming shows growing prefixes of this; they always
    lead to ``finish``'s text."""
    body = list(tokens)
    stop_at = next((k for k, token in enumerate(body) if token in stop_ids), None)
    if stop_at is not None:
        body = body[:stop_at]
    text = _decode(tokenizer, body).rstrip("\ufffd")
    cut = _first_stop_string(text, stops) if stops else None
    if cut is not None:
        return text[:cut]
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _seeded(cfg: GenerationConfig, device: torch.device):
    """Sampling with ``cfg.seed`` under a forked RNG: the caller's random state is left as it was."""
    if not (cfg.do_sample and cfg.seed is not None):
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        yield


def left_padded(prompts_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    width = max(len(ids) for ids in prompts_ids)
    input_ids = torch.full((len(prompts_ids), width), pad_id, dtype=torch.long)  # [batch, width]
    attention_mask = torch.zeros((len(prompts_ids), width), dtype=torch.long)  # [batch, width]
    for row, ids in enumerate(prompts_ids):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def check_prompts(prompts_ids: Sequence[Sequence[int]]) -> None:
    """ValueError for no prompts or an empty one."""
    if not prompts_ids:
        raise ValueError("no prompts")
    if any(len(ids) == 0 for ids in prompts_ids):
        raise ValueError("an empty prompt: every prompt needs at least one token")


# --------------------------------------------------------------------------- batched


def generate(
    model: Any, tokenizer: Any, prompts_ids: Sequence[Sequence[int]], cfg: GenerationConfig
) -> list[Generated]:
    """Replies to a batch of prompts (token ids, e.g. ``data.templates.encode_prompt``), in order.

    Prompts are left-padded into one ``model.generate`` call; callers choose the batch size (all prompts here
    are one batch).
    """
    from glmtune.models.load import pad_token_id

    check_prompts(prompts_ids)
    stop_ids = resolve_stop_ids(tokenizer, cfg)
    device = _device(model)
    input_ids, attention_mask = left_padded(prompts_ids, pad_token_id(tokenizer), device)
    with _seeded(cfg, device):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=hf_generation_config(tokenizer, cfg, stop_ids),
            tokenizer=tokenizer if cfg.stop else None,
        )
    new_tokens = output[:, input_ids.shape[1] :].tolist()  # [batch, generated]
    return [finish(tokenizer, row, stop_ids, cfg.stop, cfg.max_new_tokens) for row in new_tokens]


# --------------------------------------------------------------------------- streaming


class _TokenQueue(BaseStreamer):
    """A transformers streamer that hands generated token ids (not the prompt) to another thread."""

    _END = object()

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(self._END)


class _Cancelled(StoppingCriteria):
    """A stopping criterion that ends generation when the consumer stops reading."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class TextStream:
    """Text pieces of one reply as they are generated; iterate once. After the iteration ends, ``text``,
    ``token_ids`` and ``finish_reason`` hold the same as ``generate`` would return (``result``)."""

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: Sequence[int], cfg: GenerationConfig):
        from transformers import StoppingCriteriaList

        from glmtune.models.load import pad_token_id

        check_prompts([prompt_ids])
        self.tokenizer, self.cfg = tokenizer, cfg
        self.stop_ids = resolve_stop_ids(tokenizer, cfg)
        self.result: Generated | None = None
        self._tokens = _TokenQueue()
        self._cancel = _Cancelled()
        self._error: BaseException | None = None
        device = _device(model)
        input_ids, attention_mask = left_padded([prompt_ids], pad_token_id(tokenizer), device)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=hf_generation_config(tokenizer, cfg, self.stop_ids),
            tokenizer=tokenizer if cfg.stop else None,
            streamer=self._tokens,
            stopping_criteria=StoppingCriteriaList([self._cancel]),
        )

        def run() -> None:
            try:
                with _seeded(cfg, device):
                    model.generate(**kwargs)
            except BaseException as error:  # handed to the consumer, raised there
                self._error = error
            finally:
                self._tokens.end()

        self._thread = threading.Thread(target=run, name="glmtune-generate", daemon=True)
        self._thread.start()

    @property
    def text(self) -> str | None:
        return self.result.text if self.result else None

    @property
    def token_ids(self) -> list[int] | None:
        return self.result.token_ids if self.result else None

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.result.finish_reason if self.result else None

    def __iter__(self) -> Iterator[str]:
        tokens: list[int] = []
        shown = ""
        try:
            while True:
                item = self._tokens.queue.get()
                if item is _TokenQueue._END:
                    break
                tokens += item
                visible = visible_text(self.tokenizer, tokens, self.stop_ids, self.cfg.stop)
                if len(visible) > len(shown) and visible.startswith(shown):
                    yield visible[len(shown) :]
                    shown = visible
            self._thread.join()
            if self._error is not None:
                raise self._error
            self.result = finish(
                self.tokenizer, tokens, self.stop_ids, self.cfg.stop, self.cfg.max_new_tokens
            )
            if not self.result.text.startswith(shown):  # a tokenizer whose text changed after more tokens
                raise RuntimeError("streamed text is not a prefix of the final text")
            if len(self.result.text) > len(shown):
                yield self.result.text[len(shown) :]
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating (when the reader leaves early) and wait for the thread."""
        self._cancel.event.set()
        self._thread.join()


def stream(model: Any, tokenizer: Any, prompt_ids: Sequence[int], cfg: GenerationConfig) -> TextStream:
    """Stream one reply: ``for piece in stream(...)`` yields text pieces; afterwards the stream's
    ``finish_reason`` (and ``text``, ``token_ids``) are set. The pieces join to ``generate``'s text."""
    return TextStream(model, tokenizer, prompt_ids, cfg)


__all__ = [
    "FinishReason",
    "GenerationConfig",
    "Generated",
    "TextStream",
    "check_prompts",
    "finish",
    "generate",
    "hf_generation_config",
    "left_padded",
    "resolve_stop_ids",
    "stream",
    "visible_text",
]
