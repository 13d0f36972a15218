"""The README.md written into every export folder: what is in it and how to load it (text only, no torch)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

_CAUSAL = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("DIR")  # no glmtune import needed
tokenizer = AutoTokenizer.from_pretrained("DIR")
ids = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
)
out = model.generate(**ids)  # generation_config.json: the template's stop ids and the run's settings
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```
Or `glmtune chat DIR` / `glmtune predict DIR --text "..."`."""

_NATIVE = """{family} has no class in transformers; this folder loads with glmtune's native implementation (no remote
code){chat_format}:
```python
import {module}  # registers {family} with the Auto classes
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("DIR")
tokenizer = AutoTokenizer.from_pretrained("DIR")
```
Or `glmtune chat DIR` / `glmtune predict DIR --text "..."`."""

_CLASSIFIER = """transformers has no class for glmtune's head, so it is a separate file. Without glmtune:
```python
import json, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

body, tokenizer = AutoModel.from_pretrained("DIR"), AutoTokenizer.from_pretrained("DIR")
head, labels = load_file("DIR/head.safetensors"), json.load(open("DIR/labels.json"))
ids = tokenizer("a text", return_tensors="pt")
hidden = body(**ids).last_hidden_state  # [1, seq, hidden]
pooled = hidden[:, -1] if POOLING == "last" else hidden.mean(1)  # one unpadded text
probs = (pooled.float() @ head["weight"].T + head["bias"]).softmax(-1)
```
Or `glmtune predict DIR --text "..."` (batched, padding-aware)."""

_INT8 = """The Linear layers are CPU int8 (PyTorch dynamic quantization) in `model.int8.safetensors`, a layout only
glmtune reads:
```python
from glmtune.infer.export import load_export

loaded = load_export("DIR")  # replies.LoadedLM (sft) or classify.LoadedRun (classification)
```
Or `glmtune chat DIR` / `glmtune predict DIR --text "..."`. `quantization.json` holds the measured speed and
quality against the merged fp32 model."""

_GGUF = """## GGUF (llama.cpp, Ollama)

`FILE` ({quant}, architecture `{arch}`, {tokenizer} tokenizer) holds the weights, the tokenizer and the chat template
(`tokenizer.chat_template`). `Modelfile` points Ollama at it with the run's stop tokens and sampling settings:
```sh
ollama create my-model -f Modelfile && ollama run my-model  # the prompt format comes from the file
llama-cli -m FILE -cnv  # llama.cpp's chat, same template
```
transformers reads it too (dequantized to float): `AutoModelForCausalLM.from_pretrained("DIR", gguf_file="FILE")`,
`AutoTokenizer.from_pretrained("DIR", gguf_file="FILE")`."""


def _gguf_section(written: dict[str, Any]) -> str:
    text = _GGUF.format(quant=written["quant"], arch=written["architecture"], tokenizer=written["tokenizer"])
    return text.replace("FILE", written["file"])


class Native(NamedTuple):
    """A model whose class is glmtune's own, not transformers', as its config class declares it (``native_family``,
    ``native_import``), and whether its tokenizer class holds its chat format (``chat_format()``)."""

    family: str  # the model's name, for people
    module: str  # imported first: registers the classes with transformers' Auto classes
    chat_format_in_tokenizer: bool  # no Jinja chat_template: the tokenizer class builds the conversation


def loads_with_native(native: Native) -> str:
    """export.json's ``loads_with`` for a native model."""
    return f"glmtune's native {native.family}: import {native.module}, then transformers Auto classes"


def _native_causal(native: Native) -> str:
    chat_format = (
        f", and {native.family}'s chat format lives in glmtune's tokenizer class (no Jinja chat template)"
        if native.chat_format_in_tokenizer
        else ""
    )
    return _NATIVE.format(family=native.family, module=native.module, chat_format=chat_format)


def readme(notes: dict[str, Any], report: dict[str, Any] | None, native: Native | None = None) -> str:
    """README.md of an export folder, from its export.json ``notes``, the int8 ``report`` (if any) and, for a
    model whose class is glmtune's own, how it loads (``native``)."""
    if notes["weights"] == "gguf":
        how = _gguf_section(notes["gguf"])
    elif notes["weights"] == "int8":
        how = _INT8
    elif notes["task"] in ("sft", "preference"):  # core.config.CAUSAL_TASKS
        how = _native_causal(native) if native is not None else _CAUSAL
    else:
        how = _CLASSIFIER.replace("POOLING", json.dumps(notes["pooling"]))
        if native is not None:
            how = (
                f"{native.family} body: run `import {native.module}` first (glmtune's native class).\n\n"
                + how
            )
    lines = [
        "# glmtune export",
        "",
        f"- task: {notes['task']} · method: {notes['method']} · weights: {notes['weights']}",
        f"- base model: {notes['base_model']} · run: {notes['run']} · glmtune {notes['glmtune']}",
        f"- loads with: {notes['loads_with']}",
    ]
    if notes["method"] == "ptuning":
        lines.append(
            "- P-tuning v2: the trained prefix encoder is part of the model (config.json pre_seq_len)"
        )
    lines += ["", how, ""]
    if report is not None:
        lines += [
            "## int8 vs fp32 (measured at export)",
            "",
            f"{report['examples']} examples, {report['threads']} threads: forward pass {report['speedup']}x faster, "
            f"weights {report['weights_mb']['fp32']} MB → {report['weights_mb']['int8']} MB, "
            f"quality delta {json.dumps(report['delta'])}. Details: quantization.json.",
            "",
        ]
    return "\n".join(lines)
