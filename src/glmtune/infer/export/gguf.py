"""``glmtune export RUN --gguf [--quant TYPE]``: the merged model as one GGUF file for llama.cpp and Ollama, with an
Ollama ``Modelfile`` beside it.

Written with the ``gguf`` package only: ``GGUFWriter`` for the file, ``get_tensor_name_map`` for llama.cpp's tensor
names (the same map transformers' GGUF reader inverts), ``gguf.quants.quantize`` for Q8_0/BF16. What the package
lacks is done here, as llama.cpp's ``convert_hf_to_gguf.py`` does it: the architecture's hyper-parameters as
metadata, Llama's q/k row permutation (llama.cpp's rotary layout; transformers' reader permutes back), Gemma's
RMSNorm weights stored as ``1 + w``, 1-D tensors kept F32, and a tensor Q8_0 cannot hold (rows not a multiple
of 32) written F16 instead. The tokenizer metadata is ``gguf_tokenizer``'s.

Supported: Llama-family (``llama``: Llama, SmolLM, TinyLlama, …), Qwen2 and Gemma 3 text models. Refused, with
the reason: every other architecture (llama.cpp has no such converter here), rope scaling other than the plain
one, Llama with attention/MLP biases, Gemma 3 shapes llama.cpp hard-codes differently, and ChatGLM3
(the reason is its config class's ``gguf_refusal``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError

QUANTS = ("f16", "q8_0", "bf16", "f32")  # what llama.cpp's converter offers as --outtype
DEFAULT_QUANT = "f16"
SUFFIXES = (".weight", ".bias")
LOADS_WITH = (
    "llama.cpp (llama-cli -m FILE), Ollama (ollama create NAME -f Modelfile) or transformers "
    "(from_pretrained(DIR, gguf_file=FILE))"
)


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face ``model_type`` becomes a llama.cpp architecture."""

    name: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # Llama: llama.cpp's rotary layout of the q/k rows
    norm_offset: float = 0.0  # Gemma: llama.cpp stores RMSNorm weights as 1 + w


ARCHS = {
    "llama": Arch("LLAMA", permute_qk=True),
    "qwen2": Arch("QWEN2"),
    "gemma3_text": Arch("GEMMA3", norm_offset=1.0),
}


def check_quant(quant: str | None) -> str:
    quant = (quant or DEFAULT_QUANT).lower()
    if quant not in QUANTS:
        raise UserError(f"unknown GGUF type '{quant}'", field="--quant", expected=", ".join(QUANTS))
    return quant


def file_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def _rope(config: Any) -> dict[str, Any]:
    """The rope parameters of the (full-attention) layers: transformers 5 nests them per layer type for Gemma 3."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    return dict(params.get("full_attention", params))


def check(task: str, model: Any, tokenizer: Any) -> Arch:
    """Everything that would refuse the export, checked before the export folder is made."""
    from glmtune.core.config.choices import CAUSAL_TASKS
    from glmtune.infer.export.gguf_tokenizer import tokenizer_kind

    if task not in CAUSAL_TASKS:
        raise UserError(
            f"a {task} run has no GGUF form (llama.cpp runs language models, not a classification head)",
            field="--gguf",
            expected="--merge or --quantize int8",
        )
    arch = check_model(model)
    tokenizer_kind(tokenizer)
    names = _name_map(model, arch)
    unmapped = [name for name in _weight_names(model) if names.get_name(name, try_suffixes=SUFFIXES) is None]
    if unmapped:
        raise UserError(f"no llama.cpp tensor name for {', '.join(unmapped[:3])}", field="--gguf")
    return arch


def check_model(model: Any) -> Arch:
    """The model's Arch, or a UserError saying why llama.cpp (or the reader) would get it wrong."""
    config = model.config
    kind = config.model_type
    refusal = getattr(type(config), "gguf_refusal", None)  # a model that declares why it has no GGUF export
    if refusal:
        raise UserError(refusal, field="--gguf", expected="--merge or --quantize int8")
    if kind not in ARCHS:
        raise UserError(
            f"model type '{kind}' has no GGUF conversion in glmtune",
            field="--gguf",
            expected=f"one of {', '.join(sorted(ARCHS))} (or --merge, then llama.cpp's convert_hf_to_gguf.py)",
        )
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type != "default":
        raise UserError(
            f"rope type '{rope_type}' is not written to GGUF", field="--gguf", expected="plain rope"
        )
    if kind == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise UserError(
            "a Llama with attention/MLP biases has no GGUF form the readers agree on", field="--gguf"
        )
    if kind == "gemma3_text":
        _check_gemma3(config)
    return ARCHS[kind]


def _check_gemma3(config: Any) -> None:
    """llama.cpp hard-codes Gemma 3's layer pattern (every 6th layer global), the local rope base and the query
    scale; GGUF has no key for them, so a model that differs would run wrongly."""
    head_dim = config.head_dim
    pattern = [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)
    ]
    local = dict((getattr(config, "rope_parameters", None) or {}).get("sliding_attention") or {})
    if list(config.layer_types) != pattern or config.query_pre_attn_scalar != head_dim:
        raise UserError(
            "this Gemma 3 differs from the layout llama.cpp assumes (every 6th layer global, query scale head_dim)",
            field="--gguf",
        )
    if local.get("rope_theta", 10000.0) != 10000.0:
        raise UserError("Gemma 3's local rope base must be 10000 for llama.cpp", field="--gguf")


def _metadata(writer: Any, model: Any, arch: Arch, quant: str, name: str) -> None:
    import gguf

    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[file_types[quant]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_vocab_size(config.vocab_size)
    if arch.name == "LLAMA":
        writer.add_rope_dimension_count(head_dim)
    if arch.name == "GEMMA3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)


def _permute(weight: Any, heads: int) -> Any:
    """llama.cpp's rotary layout: within each head, rows (pairs of halves) interleaved; transformers' reader
    applies the inverse (``LlamaTensorProcessor``)."""
    rows = weight.shape[0]
    # [heads * head_dim, in] → [heads, 2, head_dim/2, in] → [heads, head_dim/2, 2, in] → [heads * head_dim, in]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _name_map(model: Any, arch: Arch) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name], model.config.num_hidden_layers)


def _weight_names(model: Any) -> list[str]:
    """The model's tensors that go into the file: a tied lm_head is left out (llama.cpp and the reader use
    token_embd when output.weight is absent)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return [name for name in model.state_dict() if not (tied and name == "lm_head.weight")]


def _tensors(model: Any, arch: Arch) -> list[tuple[str, Any]]:
    """(llama.cpp name, float32 numpy array) for every weight, in the model's order (``check`` mapped them)."""
    import torch

    config = model.config
    names = _name_map(model, arch)
    state = model.state_dict()
    out = []
    for hf_name in _weight_names(model):
        gguf_name = names.get_name(hf_name, try_suffixes=SUFFIXES)
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if arch.permute_qk and ".attn_q." in gguf_name:
            data = _permute(data, config.num_attention_heads)
        elif arch.permute_qk and ".attn_k." in gguf_name:
            data = _permute(data, config.num_key_value_heads)
        if arch.norm_offset and gguf_name.endswith("norm.weight"):
            data = data + arch.norm_offset
        out.append((gguf_name, data))
    return out


def _add_tensor(writer: Any, name: str, data: Any, quant: str) -> str:
    """Add one tensor in ``quant`` (1-D: F32, as llama.cpp); returns the type written."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if data.ndim <= 1 or quant == "f32":
        writer.add_tensor(name, data.astype(np.float32))
        return "f32"
    if quant == "f16":
        writer.add_tensor(name, data.astype(np.float16))
        return "f16"
    qtype = GGMLQuantizationType.Q8_0 if quant == "q8_0" else GGMLQuantizationType.BF16
    try:
        packed = quants.quantize(data, qtype)  # [rows, bytes per row]
    except quants.QuantError:  # rows not a multiple of the block size: llama.cpp falls back to F16 too
        writer.add_tensor(name, data.astype(np.float16))
        return "f16"
    writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
    return quant


def modelfile(gguf_file: str, loaded: Any) -> str:
    """An Ollama Modelfile: the file, the run's stop tokens and sampling settings. No TEMPLATE: Ollama takes the
    prompt format from the file's ``tokenizer.chat_template``."""
    g = loaded.cfg.generate
    lines = [f"FROM ./{gguf_file}", ""]
    for token in loaded.tokenizer.convert_ids_to_tokens(list(loaded.format.stop_ids())):
        lines.append(f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}")
    lines.append(f"PARAMETER num_predict {g.max_new_tokens}")
    lines.append(f"PARAMETER repeat_penalty {g.repetition_penalty}")
    if g.do_sample:
        lines += [
            f"PARAMETER temperature {g.temperature}",
            f"PARAMETER top_p {g.top_p}",
            f"PARAMETER top_k {g.top_k}",
        ]
    else:
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def write_file(
    path: Path, model: Any, tokenizer: Any, quant: str, chat_template: str | None, name: str
) -> dict:
    """``model`` (a transformers causal LM) and ``tokenizer`` as one GGUF file at ``path``; returns what was
    written (architecture, tokenizer kind, tensor count per type)."""
    import gguf

    from glmtune.infer.export.gguf_tokenizer import write_tokenizer

    arch = check("sft", model, tokenizer)
    arch_name = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.name]]
    writer = gguf.GGUFWriter(path, arch_name)
    _metadata(writer, model, arch, quant, name)
    kind = write_tokenizer(writer, tokenizer, model.config.vocab_size, chat_template)
    written: dict[str, int] = {}
    for tensor_name, data in _tensors(model, arch):
        tensor_type = _add_tensor(writer, tensor_name, data, quant)
        written[tensor_type] = written.get(tensor_type, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "file": path.name,
        "quant": quant,
        "architecture": arch_name,
        "tokenizer": kind,
        "tensor_types": written,
    }


def write_gguf(
    folder: Path, loaded: Any, model: Any, quant: str, chat_template: str | None
) -> dict[str, Any]:
    """Write ``model-<quant>.gguf`` (the run's chat template, else the tokenizer's) and ``Modelfile`` into
    ``folder``; returns what export.json records."""
    from glmtune.core.runs import atomic_write_text

    template = chat_template or getattr(loaded.tokenizer, "chat_template", None)
    name = Path(str(loaded.cfg.model.name_or_path)).name or "glmtune"
    written = write_file(folder / file_name(quant), model, loaded.tokenizer, quant, template, name)
    atomic_write_text(folder / "Modelfile", modelfile(written["file"], loaded))
    return written | {"chat_template": template is not None}
