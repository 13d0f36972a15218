"""glmtune export --gguf: transformers' own GGUF loader (an independent reader: its tensor map inverted, Llama's
q/k permutation undone, Gemma's norm offset removed, its tokenizer rebuilt from the metadata) reads the file back
with the merged model's logits and the run's tokenizer and chat template; every refusal is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glmtune.cli import main
from tests.helpers import bpe_tokenizer, sft_config, train
from tests.tiny import tiny_chatglm3, tiny_gemma_config, tiny_llama_config
from tests.unit.infer.test_export import export_fails

TEXT = "<|im_start|>user\n这个好 Hello 123<|im_end|>\n<|im_start|>assistant\n"
F16_ATOL = 1e-2  # the bound for f16 weights
# Q8_0 (8-bit blocks of 32, one scale each): the worst logit error as a share of the largest logit. Measured 4%
# (0.20 on logits up to 5.1) on this 2-layer model with weights at std 0.2; f16 on the same: 7e-3.
Q8_SHARE = 0.06


def read_back(folder: Path, name: str):
    """The GGUF file through transformers' loader (model and tokenizer), as a user without glmtune would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def spread_(model, std: float = 0.2):
    """Matrices drawn at ``std`` (not the init's 0.02, under which attention is near uniform and a wrong q/k
    layout would go unseen), norms and biases around their init: every part of the layout shows in the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, std)
            elif name.endswith("bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)  # zero-init biases, (1 + w) norms: visible
    return model.eval()


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits  # [1, seq, vocab]


@pytest.fixture(scope="module")
def bpe_llama_dir(tmp_path_factory) -> Path:
    """The tiny Llama (2 layers, width 32) over a byte-level BPE with ChatML's special tokens."""
    from transformers import AutoModelForCausalLM

    tokenizer = bpe_tokenizer("chatml", None)
    config = tiny_llama_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    folder = tmp_path_factory.mktemp("bpe-llama")
    spread_(AutoModelForCausalLM.from_config(config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.usefixtures("reset_accelerate")
def test_lora_run_to_gguf_reads_back_in_transformers(tmp_path, bpe_llama_dir, chat_file):
    from transformers import AutoModelForCausalLM

    from glmtune.infer import lm

    run = train(tmp_path, sft_config(bpe_llama_dir, {"train_file": str(chat_file), "template": "chatml"}))
    merged_dir, f16, q8 = tmp_path / "merged", tmp_path / "f16", tmp_path / "q8"
    main(["export", str(run), "--out", str(merged_dir), "--merge"])
    main(["export", str(run), "--out", str(f16), "--gguf"])  # f16 by default
    main(["export", str(run), "--out", str(q8), "--gguf", "--quant", "q8_0"])
    loaded = lm.load_run(run)
    ids = loaded.tokenizer(TEXT, add_special_tokens=False).input_ids
    merged = logits(AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval(), ids)
    base = logits(AutoModelForCausalLM.from_pretrained(str(bpe_llama_dir), dtype=torch.float32).eval(), ids)
    assert (merged - base).abs().max() > 1e-3, "the LoRA changed the model"

    f16_model, f16_tokenizer = read_back(f16, "model-f16.gguf")
    assert type(f16_model).__name__ == "LlamaForCausalLM"
    f16_logits = logits(f16_model, ids)
    q8_model, q8_tokenizer = read_back(q8, "model-q8_0.gguf")
    q8_logits = logits(q8_model, ids)
    print(
        f"max |logit| {merged.abs().max():.3f}, f16 error {(f16_logits - merged).abs().max():.2e}, "
        f"q8_0 error {(q8_logits - merged).abs().max():.2e}"
    )
    torch.testing.assert_close(f16_logits, merged, atol=F16_ATOL, rtol=0)
    assert (q8_logits - merged).abs().max() < Q8_SHARE * merged.abs().max()
    assert not torch.allclose(q8_logits, merged, atol=1e-3), "Q8_0 really rounded the weights"
    assert (q8 / "model-q8_0.gguf").stat().st_size < (f16 / "model-f16.gguf").stat().st_size

    # The tokenizer rebuilt from the metadata: same ids, special tokens whole, the run's template (ChatML).
    for tokenizer in (f16_tokenizer, q8_tokenizer):
        assert tokenizer(TEXT, add_special_tokens=False).input_ids == ids
        messages = [{"role": "user", "content": "这个好"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        from glmtune.data.conversation import Message

        assert text == loaded.format.render([Message("user", "这个好")], None, True)
        assert tokenizer.decode(ids) == TEXT

    modelfile = (q8 / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    notes = json.loads((q8 / "export.json").read_text())
    assert (
        notes["weights"] == "gguf"
        and notes["gguf"]["quant"] == "q8_0"
        and notes["gguf"]["architecture"] == "llama"
    )
    assert notes["gguf"]["tensor_types"] == {"q8_0": 15, "f32": 5}, (
        "1-D norms stay F32, as llama.cpp keeps them"
    )
    assert "ollama create" in (q8 / "README.md").read_text()
    files = ["Modelfile", "README.md", "export.json", "model-f16.gguf"]
    assert sorted(p.name for p in f16.iterdir()) == files


def write_and_read(tmp_path: Path, model, tokenizer, quant: str = "f16"):
    from glmtune.infer.export import gguf as gguf_export

    info = gguf_export.write_file(tmp_path / "m.gguf", model.eval(), tokenizer, quant, None, "tiny")
    return info, *read_back(tmp_path, "m.gguf")


def test_qwen2_round_trip(tmp_path):
    """Qwen2 (q/k/v biases, no permutation) and an untied output matrix."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = bpe_tokenizer("chatml", None)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)  # fmt: skip
    model = spread_(Qwen2ForCausalLM(config))
    info, back, back_tokenizer = write_and_read(tmp_path, model, tokenizer)
    assert info["architecture"] == "qwen2" and type(back).__name__ == "Qwen2ForCausalLM"
    ids = tokenizer(TEXT).input_ids
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=F16_ATOL, rtol=0)
    assert back_tokenizer(TEXT).input_ids == ids


def test_gemma3_round_trip(tmp_path):
    """Gemma 3 in the layout llama.cpp hard-codes (every 6th layer global, query scale = head dim 256):
    norms written as 1 + w, read back as w."""
    tokenizer = bpe_tokenizer("chatml", None)
    config = tiny_gemma_config(vocab_size=len(tokenizer), num_hidden_layers=6, head_dim=256, layer_types=None,
                               query_pre_attn_scalar=256, sliding_window=4, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    from transformers import AutoModelForCausalLM

    model = spread_(AutoModelForCausalLM.from_config(config), std=0.1)  # 6 layers: logits kept within ±5
    info, back, _ = write_and_read(tmp_path, model, tokenizer)
    assert info["architecture"] == "gemma3"
    ids = tokenizer(TEXT).input_ids
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=F16_ATOL, rtol=0)


def sentencepiece_style_tokenizer():
    """A Llama-2-style tokenizer (BPE with byte fallback, ``<0xNN>`` tokens, ``▁`` for spaces, no automatic BOS)
    over a few letters: transformers' own ``LlamaTokenizer`` built from a vocabulary and merges."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["▁", *"abcdehlorstw"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("l", "l"), ("e", "ll"), ("h", "ell"), ("hell", "o")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=merges)


def test_sentencepiece_style_tokenizer_round_trip(tmp_path):
    """tokenizer.ggml.model "llama": byte tokens typed BYTE (好 falls back to 3 of them), spaces as ▁, no BOS
    added because the tokenizer adds none (the reader would assume one without the flag)."""
    from transformers import AutoModelForCausalLM

    tokenizer = sentencepiece_style_tokenizer()
    config = tiny_llama_config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = spread_(AutoModelForCausalLM.from_config(config))
    info, back, back_tokenizer = write_and_read(tmp_path, model, tokenizer)
    assert info["tokenizer"] == "llama"
    for text in ["the hello 好", " the  hello", "hello\nworld"]:
        ids = tokenizer(text).input_ids
        assert back_tokenizer(text).input_ids == ids and back_tokenizer.decode(ids) == tokenizer.decode(ids)
    ids = tokenizer("the hello 好").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[-3:] == ["<0xE5>", "<0xA5>", "<0xBD>"]
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=F16_ATOL, rtol=0)


# --------------------------------------------------------------------------- refusals


def test_what_is_refused_and_why(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM, GPT2Config

    from glmtune.core.errors import UserError
    from glmtune.infer.export import gguf as gguf_export
    from tests.tiny import char_tokenizer

    llama = AutoModelForCausalLM.from_config(tiny_llama_config())
    bpe = bpe_tokenizer("chatml", None)
    with pytest.raises(UserError, match="WordLevel tokenizer has no GGUF form"):
        gguf_export.check("sft", llama, char_tokenizer())
    with pytest.raises(UserError, match="classification run has no GGUF form"):
        gguf_export.check("classification", llama, bpe)
    with pytest.raises(UserError, match="model type 'gpt2' has no GGUF conversion"):
        gguf_export.check(
            "sft", AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2)), bpe
        )
    scaled = tiny_llama_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(UserError, match="rope type 'linear'"):
        gguf_export.check("sft", AutoModelForCausalLM.from_config(scaled), bpe)
    # 2 layers, head_dim 16: not the layout llama.cpp assumes.
    gemma = AutoModelForCausalLM.from_config(tiny_gemma_config())
    with pytest.raises(UserError, match="differs from the layout llama.cpp assumes"):
        gguf_export.check("sft", gemma, bpe)
    # ChatGLM3: refused, and the reason's claim holds: gguf's CHATGLM map names every native tensor once the
    # "transformer." prefix is stripped (what llama.cpp's converter does).
    chatglm = tiny_chatglm3()
    with pytest.raises(UserError, match="ChatGLM3 is not exported to GGUF"):
        gguf_export.check("sft", chatglm, bpe)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.CHATGLM, chatglm.config.num_layers)
    for name in chatglm.state_dict():
        assert names.get_name(name.removeprefix("transformer."), try_suffixes=(".weight", ".bias")), name


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--gguf", "--quant", "q4_k_m"], "unknown GGUF type 'q4_k_m'"),
        (["--merge", "--quant", "q8_0"], "--gguf --quant TYPE"),
        (["--gguf", "--quantize", "int8"], "an export of its own"),
        (["--gguf", "--merge"], "an export of its own"),
    ],
)
def test_bad_gguf_requests(tmp_path, flags, words, capsys):
    err = export_fails(str(tmp_path / "run"), "--out", str(tmp_path / "out"), *flags, capsys=capsys)
    assert words in err
    assert not (tmp_path / "out").exists()
