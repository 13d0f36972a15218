"""Classification through the language model's own head: label words scored after a prompt (PET-style).

``PromptClassifier`` holds ``backbone`` (the whole causal LM, which ``methods`` may wrap with peft) and no head;
its forward turns right-padded prompts into one score per label: the log-probability of the label's word(s)
right after the prompt, ``log Σ_words p(word | prompt)`` (a word of several tokens: the product of its tokens'
next-token probabilities). Those scores are the classifier's logits: cross-entropy over them is the loss that
fine-tunes through the prompt (Schick & Schütze 2021), and their softmax is a distribution over the labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from glmtune.core.config import ModelConfig
from glmtune.models.causal import CausalLM
from glmtune.models.heads import last_token_index


class PromptClassifier(nn.Module):
    """``backbone`` (causal LM) → log-probabilities of each label's words after the prompt → ``[batch, labels]``."""

    def __init__(self, backbone: nn.Module, candidates: list[list[list[int]]], pad_id: int):
        super().__init__()
        self.backbone = backbone
        self.head = None
        self.pad_id = pad_id
        words = [ids for label in candidates for ids in label]  # every label word, labels in order
        self.word_label = [index for index, label in enumerate(candidates) for _ in label]
        self.num_labels = len(candidates)
        width = max(len(ids) for ids in words)
        table = torch.full((len(words), width), pad_id, dtype=torch.long)  # [words, width]
        for row, ids in enumerate(words):
            table[row, : len(ids)] = torch.tensor(ids)
        self.register_buffer("words", table, persistent=False)
        self.register_buffer("word_lengths", torch.tensor([len(ids) for ids in words]), persistent=False)
        self.register_buffer("label_of_word", torch.tensor(self.word_label), persistent=False)

    @property
    def config(self) -> Any:
        return self.backbone.config

    def _logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """The LM's logits at ``positions`` ``[rows, k]`` of each (right-padded) row: ``[rows, k, vocab]``.

        Only those positions reach the vocabulary projection (a 262k vocab at every position would cost more than
        the body): a forward pre-hook on the output layer gathers them from the final hidden states, so the
        model's own output path (softcapping and all) still applies. peft prompt learning puts its virtual tokens
        first: the hidden states are longer than the input by that much."""
        seq_len = input_ids.shape[1]

        def gather(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hidden = args[0]  # [rows, virtual + seq, hidden]
            index = positions + (hidden.shape[1] - seq_len)  # [rows, k]
            picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # [rows, k, hidden]
            return (picked, *args[1:])

        handle = self.backbone.get_output_embeddings().register_forward_pre_hook(gather)
        try:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        return out.logits  # [rows, k, vocab]

    def word_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """log p(word | prompt) for every label word: ``[batch, words]`` (fp32)."""
        last = last_token_index(attention_mask)  # [batch] right-padded prompts: the answer follows `last`
        if int(self.word_lengths.max()) == 1:  # every word one token: one forward pass, one position per row
            logits = self._logits(input_ids, attention_mask, last[:, None])[:, 0].float()  # [batch, vocab]
            return logits.log_softmax(-1)[:, self.words[:, 0]]  # [batch, words]
        return self._multi_token_scores(input_ids, last)

    def _multi_token_scores(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Words of several tokens: every (prompt, word) pair is one row, the word's tokens teacher-forced."""
        batch = input_ids.shape[0]
        num_words, width = self.words.shape
        lengths = last + 1  # [batch] prompt lengths
        total = int(lengths.max()) + width
        ids = torch.full((batch, num_words, total), self.pad_id, dtype=torch.long, device=input_ids.device)
        mask = torch.zeros_like(ids)  # [batch, words, total]
        for row in range(batch):
            n = int(lengths[row])
            for word in range(num_words):
                size = int(self.word_lengths[word])
                ids[row, word, :n] = input_ids[row, :n]
                ids[row, word, n : n + size] = self.words[word, :size]
                mask[row, word, : n + size] = 1
        offsets = torch.arange(width, device=ids.device)  # [width]
        # Token j of a word sits at position n + j and is predicted at n + j - 1 (padded words: clamped, masked).
        positions = (lengths[:, None] - 1 + offsets).clamp(max=total - 1)  # [batch, width]
        positions = positions.repeat_interleave(num_words, dim=0)  # [batch*words, width]
        logits = self._logits(
            ids.view(-1, total), mask.view(-1, total), positions
        )  # [batch*words, width, vocab]
        logp = (
            logits.float().log_softmax(-1).view(batch, num_words, width, -1)
        )  # [batch, words, width, vocab]
        index = self.words[None, :, :, None].expand(batch, -1, -1, 1)  # [batch, words, width, 1]
        token_logp = logp.gather(3, index).squeeze(-1)  # [batch, words, width]
        real = offsets[None, :] < self.word_lengths[:, None]  # [words, width]
        return token_logp.masked_fill(~real, 0.0).sum(-1)  # [batch, words]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded prompts ``[batch, seq]`` → label scores ``[batch, num_labels]`` (fp32 log-probabilities)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        scores = self.word_scores(input_ids, attention_mask)  # [batch, words]
        # A label with several words: the log of their total probability.
        columns = [scores[:, self.label_of_word == label].logsumexp(-1) for label in range(self.num_labels)]
        return torch.stack(columns, dim=-1)  # [batch, labels]

    # Recompute activations in backward, as a causal LM does (inputs require grad for frozen embeddings).
    gradient_checkpointing_enable = CausalLM.gradient_checkpointing_enable


def load_prompt_classifier(
    cfg: ModelConfig,
    prompt: Any,
    *,
    dropout: float | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[PromptClassifier, Any]:
    """The causal LM of ``cfg`` wrapped to score ``prompt``'s label words (a ``data.prompt.Prompt``)."""
    from glmtune.models.load import check_model_folder, load_causal_lm, load_tokenizer, pad_token_id

    check_model_folder(cfg)
    tokenizer = load_tokenizer(cfg)
    candidates = prompt.candidates(tokenizer)  # bad label words fail before the weights load
    model = load_causal_lm(cfg, dropout=dropout, config_overrides=config_overrides)
    return PromptClassifier(model, candidates, pad_token_id(tokenizer)), tokenizer
