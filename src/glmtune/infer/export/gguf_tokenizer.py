"""The tokenizer half of a GGUF file: the ``tokenizer.ggml.*`` metadata llama.cpp (and transformers' GGUF reader)
rebuild a tokenizer from, written from a Hugging Face fast tokenizer.

Two kinds, as llama.cpp's ``convert_hf_to_gguf.py`` writes them:

- byte-level BPE (``tokenizer.json`` model BPE, ByteLevel decoder, no byte fallback) → ``tokenizer.ggml.model
  = "gpt2"``: every token as the vocabulary spells it, its type, the merges, and ``tokenizer.ggml.pre`` naming
  the pre-tokenizer split (llama.cpp has one regex per name; unknown splits are refused, since llama.cpp would
  cut the text differently from the model's own tokenizer);
- SentencePiece-style BPE (byte fallback, ``<0xNN>`` byte tokens, ``▁`` for spaces; Llama 2, Gemma) →
  ``"llama"``: tokens, scores (``-id``: SentencePiece orders a BPE vocabulary best-first), types, and the merges
  too (transformers' reader uses them; llama.cpp uses the scores).

Token types as llama.cpp's converter sets them: added special tokens CONTROL, other added tokens USER_DEFINED,
``<0xNN>`` BYTE, the unknown token UNKNOWN, ids the tokenizer lacks up to the model's vocabulary size
``[PAD<id>]`` UNUSED. Special token ids, add-BOS/EOS flags and the merges come from gguf's own ``SpecialVocab``
reading the saved tokenizer files. Anything else (WordLevel, Unigram, WordPiece vocabularies) is refused.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _backend(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer",
            field="--gguf",
            expected="a model whose tokenizer has a tokenizer.json (byte-level BPE or SentencePiece-style BPE)",
        )
    return json.loads(backend.to_str())


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE's pre-tokenizer (its tokenizer.json form).

    Plain ByteLevel with its own regex is GPT-2's split; Digits + ByteLevel is SmolLM's; a Split regex is named by
    transformers' table of the splits llama.cpp knows (the first name listed for that regex)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds and kinds[0] == "Split" and kinds[-1] == "ByteLevel" and not steps[-1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        names = [name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == pattern]
        if names and len(kinds) == 2:
            return names[0]
    raise UserError(
        f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not a split llama.cpp knows",
        field="--gguf",
        expected="a byte-level BPE with GPT-2's, SmolLM's or a known regex split (llama3, qwen2, gpt-4o, …)",
    )


def tokenizer_kind(tokenizer: Any) -> str:
    """``"gpt2"`` or ``"llama"`` (``tokenizer.ggml.model``), or a UserError naming what the tokenizer is."""
    spec = _backend(tokenizer)
    model, decoder = spec.get("model", {}), spec.get("decoder") or {}
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        _pre_tokenizer_name(spec.get("pre_tokenizer"))  # refused here, before anything is written
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    raise UserError(
        f"a {model.get('type')} tokenizer has no GGUF form llama.cpp reads",
        field="--gguf",
        expected="a byte-level BPE (GPT-2 style) or SentencePiece-style BPE tokenizer",
    )


def _token_table(tokenizer: Any, vocab_size: int, kind: str) -> tuple[list[str], list[int]]:
    """Every id's token text and llama.cpp token type, padded to ``vocab_size`` (the embedding's rows)."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    if max(by_id) >= vocab_size:
        raise UserError(
            f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings",
            field="--gguf",
            expected="a tokenizer that fits the model's vocabulary",
        )
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            special = added[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif index == tokenizer.unk_token_id:
            tokens.append(token)
            types.append(gguf.TokenType.UNKNOWN)
        elif kind == "llama" and BYTE_TOKEN.fullmatch(token):
            tokens.append(token)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer prepends ``▁`` to the text (Metaspace or a Prepend normalizer)."""
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer")])
    return '"prepend_scheme": "always"' in text or '"prepend_scheme": "first"' in text or '"Prepend"' in text


def write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, chat_template: str | None) -> str:
    """Add the tokenizer metadata and ``tokenizer.chat_template`` to the GGUFWriter; returns the kind."""
    import gguf

    kind = tokenizer_kind(tokenizer)
    spec = _backend(tokenizer)
    tokens, types = _token_table(tokenizer, vocab_size, kind)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([-float(index) for index in range(vocab_size)])
        writer.add_add_space_prefix(_adds_space_prefix(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads the saved files, as llama.cpp's does
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=True, n_vocab=vocab_size)
    special.chat_template = chat_template or special.chat_template
    # What the tokenizer does, not what its files say: transformers' reader assumes BOS for a SentencePiece
    # vocabulary without the flag, and SpecialVocab only parses simple post-processors.
    ids, bos, eos = tokenizer("a").input_ids, tokenizer.bos_token_id, tokenizer.eos_token_id
    special.add_special_token["bos"] = bos is not None and ids[:1] == [bos]
    special.add_special_token["eos"] = eos is not None and ids[-1:] == [eos]
    special.add_to_gguf(writer, quiet=True)
    return kind
