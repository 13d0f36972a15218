"""The real built-in models: GGUF → cached folder, and the cached folder is the GGUF model, logit for logit.

Slow (about 2 minutes for both on 2 CPU cores): ``pytest -m slow tests/slow/test_models_builtin_slow.py``.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from glmtune.core.config import ModelConfig
from glmtune.models import BUILTIN_MODELS, load_backbone, load_causal_lm, load_classifier, load_tokenizer
from glmtune.models.builtin import is_cached, resolve_builtin
from glmtune.models.load import attention

pytestmark = pytest.mark.slow

CHINESE = "这家酒店的服务非常好，房间干净，下次还会再来。"
MIXED = "In 2024, 12345 apples cost $3.50.\n\n你好，世界！"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_builtin_converts_and_matches_the_gguf_model(name, cache, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = BUILTIN_MODELS[name]
    gguf = entry.fetch_gguf(tmp_path)
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation=attention(ModelConfig())
    )  # the kernel glmtune picks, so the logits can be compared bit for bit

    folder = resolve_builtin(name, cache)  # cold: converts
    assert is_cached(name, cache) and sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "config.json",
            "generation_config.json",
            "glmtune-builtin.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
        + (["chat_template.jinja"] if entry.chat_template else [])
    )
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    cfg = ModelConfig(name_or_path=name, cache_dir=str(cache))
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg)  # warm: from the cache
    assert time.perf_counter() - start < 30 and (folder / "model.safetensors").stat().st_mtime_ns == stamp

    # The tokenizer is the GGUF's, id for id; Gemma starts with <bos>, SmolLM2's GGUF says add_bos_token=False.
    for text in (CHINESE, MIXED):
        assert tokenizer(text)["input_ids"] == reference_tokenizer(text)["input_ids"]
    ids = tokenizer(CHINESE)["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) == (name == "gemma3-270m")
    assert bool(tokenizer.chat_template) == entry.chat_template
    assert tokenizer.pad_token is not None

    # Same weights, tied embeddings still tied, same logits on a Chinese sentence.
    assert model.lm_head.weight is model.get_input_embeddings().weight
    encoded = tokenizer(CHINESE, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**encoded).logits  # [1, seq, vocab]
        got = model(**encoded).logits  # [1, seq, vocab]
        body = load_backbone(cfg)(**encoded).last_hidden_state  # [1, seq, hidden]
    assert torch.equal(got, expected)
    assert torch.equal(body, model.model(**encoded).last_hidden_state)


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_classifier_on_a_builtin_pads_either_side(name, cache):
    cfg = ModelConfig(name_or_path=name, cache_dir=str(cache))
    classifier, tokenizer = load_classifier(cfg, 2)
    texts = [CHINESE, "太差了"]
    logits = {}
    for side in ("right", "left"):
        tokenizer.padding_side = side
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits[side] = classifier(encoded["input_ids"], encoded["attention_mask"])  # [2, 2]
    with torch.no_grad():
        alone = tokenizer([texts[1]], return_tensors="pt")
        short = classifier(alone["input_ids"], alone["attention_mask"])  # [1, 2]
    assert torch.allclose(logits["right"], logits["left"], atol=1e-4)
    assert torch.allclose(logits["right"][1:], short, atol=1e-4)
