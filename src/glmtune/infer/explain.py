"""Why a run answered as it did: token attributions of a classification run, per-token log-probabilities of a
causal LM run's reply (``glmtune explain``).

Classification: integrated gradients (Captum's ``LayerIntegratedGradients``) on the input-embedding layer
(``models.anatomy.input_embeddings``) toward one label's logit (the predicted label, or a chosen one). The
baseline is the same sequence with every non-special token replaced by the pad token (so: the pad token's
embedding; special tokens such as BOS, the length and the attention mask stay). Completeness: the attributions
add up to logit(input) − logit(baseline); Captum's convergence delta is the gap, reported with every result.
Computed in the model's own dtype without autocast (fp32 for fp32 models).

SFT and preference runs: log p(token | everything before it) for every token of the reply (given, or generated
by the run), from one forward pass, fp32 softmax. Tokens are shown as the text they add; ``pieces.word_groups``
sums them per word (Latin) or character (CJK) where the tokenizer allows.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from glmtune.core.errors import UserError
from glmtune.data.conversation import Conversation, Message
from glmtune.infer.pieces import token_pieces, word_groups
from glmtune.metrics.heatmap import HeatText

logger = logging.getLogger(__name__)

# Gauss–Legendre points. Measured |delta| / logit gap: the tiny test model 1e-4 at 64 steps, 5e-7 at 128; the
# docs' Gemma 3 sentiment run (9 layers, mean pooling) 14% at 64, 2.5% at 256: real models need the steps.
DEFAULT_STEPS = 256
LOOSE = 0.05  # a delta above this share of the logit gap gets a warning to raise --steps


@dataclass
class Explanation:
    """One explained text: its tokens (ids, the text each adds, one value each) and words; ``kind`` says what the
    values are (``attribution`` to a label's logit, or ``logprob`` of a reply token); ``summary`` holds the rest
    (label, logits, delta; or the reply and its perplexity)."""

    kind: str
    text: str
    ids: list[int]
    pieces: list[str]
    values: list[float]
    words: list[tuple[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            **self.summary,
            "tokens": [
                {"id": i, "piece": p, "value": v} for i, p, v in zip(self.ids, self.pieces, self.values)
            ],
            "words": [{"text": w, "value": v} for w, v in self.words],
        }

    def caption(self) -> str:
        s = self.summary
        if self.kind == "attribution":
            return (
                f"label {s['label']} (p={s['probability']:.4f}); logit {s['logit']:+.4f}, at the baseline "
                f"{s['baseline_logit']:+.4f}; attributions sum to {s['attribution_sum']:+.4f} "
                f"(convergence delta {s['delta']:+.2e}, {s['steps']} steps)"
            )
        return (
            f"reply of {len(self.values)} tokens: mean log p {s['mean_logprob']:.4f}, perplexity "
            f"{s['perplexity']:.3f}; least likely: {s['least_likely']!r} (p={math.exp(s['least_logprob']):.4f})"
        )

    def heat_texts(self, title: str) -> list[HeatText]:
        """The token view, and the word view where words group several tokens."""
        scale = "signed" if self.kind == "attribution" else "probability"
        views = [HeatText(f"{title}: tokens", self.pieces, self.values, scale, self.caption())]
        if self.words and len(self.words) < len(self.pieces):  # a word's value: its tokens' sum
            views.append(
                HeatText(f"{title}: words", [w for w, _ in self.words], [v for _, v in self.words], scale)
            )
        return views


def short_name(*parts: str | None) -> str:
    """A stable file name for one explained text: ``text-`` and 8 hex digits of its hash."""
    digest = hashlib.sha1("\x00".join(p or "" for p in parts).encode("utf-8")).hexdigest()
    return f"text-{digest[:8]}"


def _words(
    tokenizer: Any, ids: list[int], values: list[float], special: set[int]
) -> tuple[list[str], list[tuple[str, float]]]:
    pieces, texts = token_pieces(tokenizer, ids)
    groups = word_groups(texts, [i in special for i in ids])
    words = [("".join(texts[i] for i in group), sum(values[i] for i in group)) for group in groups]
    return pieces, words


# =========================================================================== classification


def baseline_ids(input_ids: torch.Tensor, special_ids: set[int], pad_id: int) -> torch.Tensor:
    """``input_ids`` [1, seq] with every non-special token replaced by ``pad_id`` (specials stay in place)."""
    keep = torch.tensor([[int(i) in special_ids for i in input_ids[0]]], device=input_ids.device)  # [1, seq]
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad_id))  # [1, seq]


def label_index(labels: list[str], label: str | None, logits: torch.Tensor) -> int:
    """The index of ``label`` (``--label``), or of the predicted (highest-logit) label."""
    if label is None:
        return int(logits.argmax())
    if label not in labels:
        raise UserError(f"unknown label {label!r}", field="--label", expected=f"one of {', '.join(labels)}")
    return labels.index(label)


def attribute(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    baseline: torch.Tensor,
    target: int,
    *,
    steps: int = DEFAULT_STEPS,
    internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Integrated gradients of ``model(ids, mask)[:, target]`` on the input-embedding layer's output, from
    ``baseline`` to ``input_ids`` (both [1, seq]): per-token attributions [seq] (summed over the hidden size) and
    Captum's convergence delta (sum of attributions − (logit at the input − logit at the baseline))."""
    from captum.attr import LayerIntegratedGradients

    from glmtune.models.anatomy import input_embeddings

    mask = torch.ones_like(input_ids)  # [1, seq]
    integrated = LayerIntegratedGradients(lambda ids, m: model(ids, m), input_embeddings(model))
    attributions, delta = integrated.attribute(
        input_ids,
        baselines=baseline,
        additional_forward_args=(mask,),
        target=target,
        n_steps=steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )  # [1, seq, hidden], [1]
    return attributions[0].sum(-1).detach().float().cpu(), float(delta[0])  # [seq]


def explain_label(
    loaded: Any, text: str, label: str | None = None, *, steps: int = DEFAULT_STEPS
) -> Explanation:
    """Token attributions of ``text`` toward ``label`` (default: the predicted one) for a classification run
    (``infer.classifier.LoadedRun``); the run's own encoding (a prompt run's template included)."""
    from glmtune.data import Example
    from glmtune.infer.classifier import encode
    from glmtune.models.load import pad_token_id

    if steps < 1:
        raise UserError(f"got {steps}", field="--steps", expected="an integer >= 1")
    tokenizer, model = loaded.tokenizer, loaded.classifier.eval()
    word_lengths = getattr(model, "word_lengths", None)  # a prompt run's label words, in tokens
    if word_lengths is not None and int(word_lengths.max()) > 1:
        # Those words are teacher-forced after the prompt: the embedding layer sees longer rows than the input.
        raise UserError(
            "explain attributes prompt runs whose label words are one token each",
            field="prompt.verbalizer",
            expected="single-token label words (or a classification head)",
        )
    dataset = encode(
        loaded,
        tokenizer,
        [Example(text=text, label=0, line=1, source="--text")],
        loaded.cfg.train.max_seq_len,
    )
    device = next(model.parameters()).device
    input_ids = torch.tensor([dataset.input_ids[0]], device=device)  # [1, seq]
    special = set(tokenizer.all_special_ids)
    baseline = baseline_ids(input_ids, special, pad_token_id(tokenizer))  # [1, seq]
    with torch.no_grad():
        logits = model(input_ids, torch.ones_like(input_ids))[0].float()  # [labels]
        baseline_logits = model(baseline, torch.ones_like(baseline))[0].float()  # [labels]
    target = label_index(loaded.labels, label, logits)
    scores, delta = attribute(
        model, input_ids, baseline, target, steps=steps, internal_batch_size=loaded.cfg.eval.batch_size
    )
    gap = float(logits[target] - baseline_logits[target])
    if abs(delta) > LOOSE * max(abs(gap), 1e-6):
        logger.warning(
            "integrated gradients not converged: delta %.3g is %.0f%% of the logit gap %.3g; raise --steps (now %d)",
            delta,
            100 * abs(delta) / max(abs(gap), 1e-6),
            gap,
            steps,
        )
    ids = input_ids[0].tolist()
    values = [float(v) for v in scores]
    pieces, words = _words(tokenizer, ids, values, special)
    summary = {
        "label": loaded.labels[target],
        "predicted": loaded.labels[int(logits.argmax())],
        "probability": float(logits.softmax(-1)[target]),
        "logit": float(logits[target]),
        "baseline_logit": float(baseline_logits[target]),
        "attribution_sum": float(sum(values)),
        "delta": delta,
        "steps": steps,
        "baseline": "pad token at every non-special position",
    }
    return Explanation("attribution", text, ids, pieces, values, words, summary)


# =========================================================================== causal LM replies


def reply_positions(labels: list[int]) -> list[int]:
    """The positions of the last reply: the last contiguous run of learned labels (``-100``: not learned)."""
    end = max((i for i, label in enumerate(labels) if label != -100), default=-1)
    start = end
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    return list(range(start, end + 1)) if end >= 0 else []


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, input_ids: list[int], positions: list[int]) -> list[float]:
    """log p(input_ids[t] | input_ids[:t]) for each t of ``positions`` (all > 0), from one forward pass."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)  # [1, seq]
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]  # [seq, vocab]
    where = torch.tensor(positions, device=device)  # [reply]
    logprobs = logits[where - 1].float().log_softmax(-1)  # [reply, vocab]: position t-1 predicts token t
    return logprobs.gather(-1, ids[0, where].unsqueeze(-1)).squeeze(-1).cpu().tolist()  # [reply]


def explain_reply(loaded: Any, prompt: Conversation, reply: str | None = None) -> Explanation:
    """Per-token log-probabilities of ``reply`` to ``prompt`` (its messages end with the user's turn) under a
    causal LM run (``infer.lm.LoadedLM``); ``reply`` None: the run generates one (its ``generate.*`` settings)."""
    from glmtune.data.templates import encode_conversation
    from glmtune.infer.lm import reply_all

    generated = reply is None
    if reply is None:
        reply = reply_all(loaded, [prompt])[0]["output"]
    conversation = Conversation(
        [*prompt.messages, Message("assistant", reply)], prompt.tools, prompt.line, prompt.source
    )
    encoded = encode_conversation(
        loaded.tokenizer,
        conversation,
        loaded.format,
        max_seq_len=loaded.cfg.train.max_seq_len,
        train_on_prompt=False,
    )
    positions = reply_positions(encoded.labels)
    if encoded.dropped or not positions or positions[0] == 0:
        raise UserError(
            "the prompt and reply do not fit train.max_seq_len",
            field="train.max_seq_len",
            expected=f"a prompt and reply within {loaded.cfg.train.max_seq_len} tokens",
        )
    values = token_logprobs(loaded.model.eval(), encoded.input_ids, positions)
    ids = [encoded.input_ids[t] for t in positions]
    # The reply's pieces decode from its first token on: the prompt's text never leaks into the first piece.
    special = set(loaded.tokenizer.all_special_ids)
    pieces, words = _words(loaded.tokenizer, ids, values, special)
    worst = min(range(len(values)), key=values.__getitem__)
    mean = sum(values) / len(values)
    summary = {
        "reply": reply,
        "generated": generated,
        "mean_logprob": mean,
        "perplexity": math.exp(min(-mean, 50.0)),
        "least_likely": pieces[worst],
        "least_logprob": values[worst],
        "positions": positions,
    }
    return Explanation("logprob", prompt.messages[-1].content, ids, pieces, values, words, summary)


def user_prompt(text: str, system: str | None = None) -> Conversation:
    """A one-turn prompt (``--text``)."""
    messages = ([Message("system", system)] if system else []) + [Message("user", text)]
    return Conversation(messages, None, None, "--text")


__all__ = [
    "DEFAULT_STEPS",
    "Explanation",
    "attribute",
    "baseline_ids",
    "explain_label",
    "explain_reply",
    "label_index",
    "reply_positions",
    "short_name",
    "token_logprobs",
    "user_prompt",
]
