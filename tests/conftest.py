"""Shared fixtures: a tiny random Llama saved as a normal HF folder, and small labelled data files.

Everything is built in memory from a config: no network, no real weights, milliseconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CHATGLM3 = REPO.parent / "shared" / "chatglm3"

POSITIVE = ["好", "棒", "喜欢", "满意", "推荐", "快", "赞"]
NEGATIVE = ["差", "烂", "失望", "慢", "退货", "贵", "坏"]
FILLER = ["这", "个", "东西", "质量", "服务", "物流", "真", "很", "非常", "有点"]


def make_tokenizer(vocab_chars: list[str]):
    """A character-level fast tokenizer with <bos>/<eos>/<pad>/<unk>, like a real causal LM's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(vocab_chars)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def review(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return "".join(words)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama of width 32 with a char tokenizer, saved with safetensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def save_tiny_llama(path: Path, hidden_size: int = 32, intermediate_size: int = 64) -> Path:
    """Write a seeded 2-layer Llama with the char tokenizer into ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    chars = sorted({c for w in POSITIVE + NEGATIVE + FILLER for c in w} | set("abcdefghij0123456789 ，。!"))
    tokenizer = make_tokenizer(chars)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_file(tmp_path) -> Path:
    """96 short synthetic reviews, balanced, in JSONL with text/label columns."""
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


def tiny_config(model_dir: Path, data_file: Path, **sections) -> dict:
    """A complete config dict for a 2-step run of the tiny model; ``sections`` override keys per section."""
    cfg = {
        "task": "classification",
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_file": str(data_file), "validation_size": 16, "test_size": 16},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {
            "max_steps": 2,
            "warmup_ratio": 0.0,  # a warm-up step would run at lr 0 and leave the zero-init head still
            "batch_size": 8,
            "lr": 1e-2,
            "max_seq_len": 32,
            "log_steps": 1,
            "mixed_precision": "no",
        },
        "eval": {"batch_size": 16},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.fixture
def reset_accelerate():
    """accelerate keeps process-wide singletons; reset them so each in-process run starts clean."""
    from glmtune.train import reset_process_state

    reset_process_state()
    yield
    reset_process_state()
