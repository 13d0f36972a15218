"""``glmtune export RUN_DIR --out DIR``: a run folder → a standalone model folder for deployment.

- ``--merge``: the base model with the run's training folded in (LoRA merged by peft's ``merge_and_unload``, any
  ``method.lora_variant``: DoRA's magnitudes and rsLoRA's scale by peft, PiSSA/OLoRA as the plain LoRA on the
  original base their adapter folder holds;
  full/freeze body tensors as loaded; a P-tuning v2 prefix encoder kept inside the model, its ``pre_seq_len``
  in config.json) as safetensors + config + tokenizer. SFT runs also get the chat template
  (``tokenizer_config.json``'s ``chat_template``) and ``generation_config.json`` with the template's stop ids:
  ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads it with no glmtune import (a model whose class
  is glmtune's own declares the module to import first, ``native_import`` on its config class; export.json and
  the README say so). Classification runs: the merged transformer body (``AutoModel``) + ``head.safetensors`` +
  ``labels.json`` (pooling in export.json).
- ``--quantize int8``: the merged model with every Linear in CPU int8 (``models.int8``), plus
  ``quantization.json``: speed and quality (accuracy, or loss/ROUGE) of fp32 vs int8 on the run's test split
  (``measure``).
- ``--gguf [--quant f16|q8_0|bf16|f32]``: the merged model as one GGUF file for llama.cpp/Ollama, its chat
  template in the metadata, and an Ollama ``Modelfile`` (``gguf``). A folder of its own: transformers' GGUF
  tokenizer loader drops the chat template when the folder also holds HF tokenizer files.

Every export folder has ``export.json`` (what it is, the run's config) and a README.md; ``load_export`` loads any
of them back for ``glmtune predict`` / ``chat``. The folder is written to a temporary name and renamed at the
end: an existing ``--out`` is never touched, a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glmtune.core.config.choices import CAUSAL_TASKS
from glmtune.core.errors import UserError
from glmtune.infer.export import gguf as gguf_export
from glmtune.infer.export.measure import MEASURE_LIMIT as MEASURE_LIMIT  # re-exported
from glmtune.infer.export.measure import holder_of, measure_int8
from glmtune.infer.export.readme import Native, loads_with_native, readme

EXPORT_FILE = "export.json"  # not glmtune.json: an export is not a run folder
EXPORT_FORMAT = 1
QUANTIZE_MODES = ("int8",)
BITSANDBYTES_MODES = ("int4", "nf4", "fp4", "4bit", "8bit", "bnb4", "bnb8")


# =========================================================================== checks (before any loading)


def check_request(
    out: Path, *, merge: bool, quantize: str | None, gguf: bool, quant: str | None = None
) -> None:
    """Every mistake in the command line itself, as one UserError, before anything is loaded or written."""
    if quant is not None and not gguf:
        raise UserError("--quant is the GGUF tensor type", field="--quant", expected="--gguf --quant TYPE")
    if gguf:
        gguf_export.check_quant(quant)
        if quantize is not None or merge:
            raise UserError(
                "--gguf is an export of its own", expected="--gguf, --merge or --quantize int8 per --out"
            )
    if quantize is not None and quantize not in QUANTIZE_MODES:
        if quantize.lower() in BITSANDBYTES_MODES:
            raise UserError(
                f"'{quantize}' is bitsandbytes quantization at load time, not an export format "
                "(train, predict or serve with model.quantization: 4bit/8bit instead)",
                field="--quantize",
                expected="int8 (CPU dynamic quantization)",
            )
        raise UserError(f"unknown quantize mode '{quantize}'", field="--quantize", expected="int8")
    if not merge and quantize is None and not gguf:
        raise UserError("nothing to export", expected="--merge, --quantize int8 or --gguf")
    if out.exists():
        raise UserError(
            "output folder exists (export never overwrites)", file=str(out), expected="a new --out"
        )


@contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """A temporary folder next to ``path``, renamed to ``path`` when the block succeeds (never over anything)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # appeared while we worked
            raise UserError("output folder exists (export never overwrites)", file=str(path))
        _follow_umask(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_umask(folder: Path) -> None:
    """mkdtemp makes a 0700 folder and some writers 0600 files; an export should follow the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.rglob("*"):
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


# =========================================================================== loading the run


def _load_run(run_dir: Path) -> Any:
    """The run's model with its trained weights: ``lm.LoadedLM`` (sft) or ``classifier.LoadedRun``."""
    from glmtune.core.runs import RunDir
    from glmtune.infer import classifier, lm

    info = RunDir(run_dir).check(need_weights=True)
    _check_exportable(RunDir(run_dir))
    # A QLoRA run merges into the unquantized base (LLaMA-Factory's way): the merged model differs from the
    # quantized one it trained on by the quantization error, but is not rounded twice.
    if info.get("task", "classification") in CAUSAL_TASKS:
        return lm.load_run(run_dir, full_precision=True)
    return classifier.load_run(run_dir, full_precision=True)


def _check_exportable(run: Any) -> None:
    """Soft prompts (peft virtual tokens) and prompt classification (a template + label words around the LM) are
    not weights a plain model folder can hold: refused before anything loads."""
    from glmtune.core import config as config_mod
    from glmtune.methods import PROMPT_LEARNING

    cfg = config_mod.load(run.config)
    if cfg.method.name in PROMPT_LEARNING or cfg.prompt.template is not None:
        what = f"method {cfg.method.name}" if cfg.method.name in PROMPT_LEARNING else "prompt classification"
        raise UserError(
            f"a {what} run cannot be exported as a standalone model (nothing to merge into the weights)",
            file=str(run.path),
            expected="glmtune predict/eval RUN_DIR, which use the run folder directly",
        )


def merge(loaded: Any) -> Any:
    """Fold a LoRA adapter (any variant: peft merges DoRA and rsLoRA itself; PiSSA/OLoRA runs hold a plain LoRA on
    the original base) into the base weights (in place on the holder); return the plain transformers model."""
    holder = holder_of(loaded)
    if loaded.cfg.method.name == "lora":
        holder.backbone = holder.backbone.merge_and_unload()  # peft: W + scale · B·A, adapters removed
    holder.backbone.requires_grad_(False)
    return holder.backbone.cpu().eval()


# =========================================================================== writing


def _chat_template(loaded: Any) -> str | None:
    """The Jinja chat template that renders like the run's ``data.template`` (None: the tokenizer's own, or a
    format the tokenizer class provides itself)."""
    from glmtune.data.chat_jinja import to_jinja
    from glmtune.data.templates import builtin_templates

    template = builtin_templates().get(loaded.cfg.data.template)
    return to_jinja(template) if template is not None else None


def _generation_config(loaded: Any) -> Any:
    """transformers' GenerationConfig with the template's stop ids (every one ends a reply) and the run's settings."""
    from transformers import GenerationConfig

    g = loaded.cfg.generate
    sampling = {"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k} if g.do_sample else {}
    return GenerationConfig(
        eos_token_id=loaded.format.stop_ids(),
        pad_token_id=loaded.tokenizer.pad_token_id,
        bos_token_id=getattr(loaded.tokenizer, "bos_token_id", None),
        max_new_tokens=g.max_new_tokens,
        do_sample=g.do_sample,
        repetition_penalty=g.repetition_penalty,
        **sampling,
    )


def _write_model(folder: Path, loaded: Any, model: Any, int8: bool) -> None:
    from glmtune.core.runs import atomic_write_json
    from glmtune.models import int8 as int8_mod

    if int8:
        model.config.save_pretrained(folder)
        int8_mod.save(model, folder)
    else:
        model.save_pretrained(folder)
    if loaded.cfg.task in CAUSAL_TASKS:
        template = _chat_template(loaded)
        if template is not None:
            loaded.tokenizer.chat_template = template
        _generation_config(loaded).save_pretrained(folder)
    else:
        loaded.classifier.save_head(folder / "head.safetensors")
        atomic_write_json(folder / "labels.json", loaded.labels)
    loaded.tokenizer.save_pretrained(folder)


def native_class(model: Any, tokenizer: Any) -> Native | None:
    """How a folder of ``model`` loads when its class is glmtune's own rather than transformers': declared by its
    config class (``native_import``, the module that registers it with the Auto classes; ``native_family``, its
    name), with whether the tokenizer class provides the chat format itself (``chat_format()``). None otherwise."""
    config_class = type(model.config)
    module = getattr(config_class, "native_import", None)
    if not module:
        return None
    family = getattr(config_class, "native_family", None) or config_class.__name__
    return Native(family, module, callable(getattr(tokenizer, "chat_format", None)))


def _notes(cfg: Any, native: Native | None, run_dir: Path, int8: bool) -> dict[str, Any]:
    from glmtune import __version__

    if int8:
        loads_with = "glmtune only: glmtune.infer.export.load_export(DIR), glmtune predict/chat DIR"
    elif native is not None:
        loads_with = loads_with_native(native)
    elif cfg.task in CAUSAL_TASKS:
        loads_with = "transformers.AutoModelForCausalLM.from_pretrained(DIR) (no glmtune needed)"
    else:
        loads_with = "transformers.AutoModel.from_pretrained(DIR) + head.safetensors (see README.md)"
    return {
        "format": EXPORT_FORMAT,
        "glmtune": __version__,
        "task": cfg.task,
        "weights": "int8" if int8 else "merged",
        "method": cfg.method.name,
        "base_model": cfg.model.name_or_path,
        "run": str(run_dir),
        "template": cfg.data.template if cfg.task in CAUSAL_TASKS else None,
        "pooling": cfg.model.pooling if cfg.task not in CAUSAL_TASKS else None,
        "loads_with": loads_with,
        "config": cfg.to_dict(),
    }


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    merge_weights: bool = False,
    quantize: str | None = None,
    gguf: bool = False,
    quant: str | None = None,
    data: str | None = None,
) -> Path:
    """Write the export folder ``out`` for the run ``run_dir`` (see the module docstring); returns ``out``."""
    from glmtune.core.runs import atomic_write_json, atomic_write_text

    run_dir, out = Path(run_dir), Path(out)
    check_request(out, merge=merge_weights, quantize=quantize, gguf=gguf, quant=quant)
    loaded = _load_run(run_dir)
    model = merge(loaded)
    if gguf:
        gguf_export.check(loaded.cfg.task, model, loaded.tokenizer)  # refusals before anything is written
    int8 = quantize == "int8"
    run_cfg = loaded.cfg  # measuring swaps in a copy without autocast
    report = measure_int8(loaded, data) if int8 else None  # quantizes the model in place
    with new_folder(out) as tmp:
        if gguf:
            written = gguf_export.write_gguf(
                tmp, loaded, model, gguf_export.check_quant(quant), _chat_template(loaded)
            )
        else:
            _write_model(tmp, loaded, model, int8)
        native = native_class(model, loaded.tokenizer)
        notes = _notes(run_cfg, native, run_dir, int8)
        if gguf:
            notes.update(weights="gguf", loads_with=gguf_export.LOADS_WITH, gguf=written)
        atomic_write_json(tmp / EXPORT_FILE, notes)
        if report is not None:
            atomic_write_json(tmp / "quantization.json", report)
        atomic_write_text(tmp / "README.md", readme(notes, report, native))
    return out


# =========================================================================== loading an export back


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()


def load_export(folder: str | Path) -> Any:
    """An export folder as ``lm.LoadedLM`` (sft) or ``classifier.LoadedRun`` (classification), in eval mode:
    what ``glmtune predict`` and ``chat`` use, whether the weights are merged fp32 or int8."""
    from transformers import AutoModel, AutoModelForCausalLM

    from glmtune.core import config as config_mod
    from glmtune.core.runs import RunDir, read_json
    from glmtune.infer.classifier import LoadedRun
    from glmtune.infer.lm import LoadedLM, resolve_template
    from glmtune.models import int8 as int8_mod
    from glmtune.models.causal import CausalLM
    from glmtune.models.heads import SequenceClassifier
    from glmtune.models.load import load_backbone, load_causal_lm, load_config, load_tokenizer

    folder = Path(folder)
    if not is_export(folder):
        raise UserError(f"not a glmtune export folder (no {EXPORT_FILE})", file=str(folder))
    notes = read_json(folder / EXPORT_FILE)
    if notes.get("weights") == "gguf":
        raise UserError("a GGUF-only export", file=str(folder), expected=gguf_export.LOADS_WITH)
    if notes.get("format") != EXPORT_FORMAT:
        raise UserError(
            f"export format {notes.get('format')} (glmtune {notes.get('glmtune')})",
            file=str(folder),
            expected=f"format {EXPORT_FORMAT}; export the run again with this glmtune",
        )
    cfg = config_mod.from_dict(notes["config"])
    int8 = notes["weights"] == "int8"
    model_cfg = dataclasses.replace(cfg.model, name_or_path=str(folder), num_layers=None)
    train_cfg = dataclasses.replace(cfg.train, mixed_precision="no") if int8 else cfg.train
    cfg = dataclasses.replace(cfg, model=model_cfg, train=train_cfg)
    tokenizer = load_tokenizer(model_cfg)
    auto_class = AutoModelForCausalLM if cfg.task in CAUSAL_TASKS else AutoModel
    if int8:
        config = load_config(model_cfg)  # also registers glmtune's native model classes with the Auto classes
        model = int8_mod.load(folder, auto_class, config)
    elif cfg.task in CAUSAL_TASKS:
        model = load_causal_lm(model_cfg)
    else:
        model = load_backbone(model_cfg)
    if cfg.task in CAUSAL_TASKS:
        fmt = resolve_template(tokenizer, cfg.data.template)
        return LoadedLM(cfg, CausalLM(model).eval(), tokenizer, fmt)
    labels = read_json(folder / "labels.json")
    classifier = SequenceClassifier(model, len(labels), pooling=cfg.model.pooling)
    classifier.load_head(folder / "head.safetensors")
    return LoadedRun(RunDir(folder), cfg, classifier.eval(), tokenizer, labels)
