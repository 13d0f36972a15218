"""Load a tokenizer, a causal LM or a bare transformer body from a built-in name or a local HF folder.

Always offline (``HF_HUB_OFFLINE``, ``local_files_only``): a name that is not a folder never reaches a hub.
``trust_remote_code`` is whatever the user set (False by default). Architectures transformers lacks but glmtune
implements natively are the subpackages of ``glmtune.models``; importing one registers its classes with the Auto
classes, so their folders need no remote code (``check_model_type`` imports them when a folder needs them).
Every mistake a user can make with ``model.name_or_path`` is a one-line UserError, checked before
transformers sees the folder. ``.bin`` weights are read by transformers with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glmtune.core import _compat
from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError
from glmtune.models.builtin import BUILTIN_MODELS, resolve_builtin, unknown_builtin
from glmtune.models.quant import bnb_config, unpack_on_cpu

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.tiktoken",
)
# Families whose tokenizers must start every sequence with <bos> (Gemma degrades badly without it).
NEEDS_BOS = ("gemma", "gemma2", "gemma3", "gemma3_text")


def _offline() -> None:
    """No hub traffic, ever; also when huggingface_hub was imported before the variables were set."""
    _compat.hub_offline()


def _field() -> dict[str, str]:
    return {"field": "model.name_or_path"}


def resolve_path(cfg: ModelConfig) -> Path:
    """The local folder for ``cfg.name_or_path``: a built-in name (converted and cached) or a folder.

    A folder that shares a built-in's name is reached as ``./name``."""
    name = cfg.name_or_path
    if name in BUILTIN_MODELS:  # the name wins over a same-named folder: a config means the same anywhere
        return resolve_builtin(name, cfg.cache_dir)
    path = Path(name).expanduser()
    if not path.exists():
        raise unknown_builtin(name)
    if not path.is_dir():
        raise UserError(
            "is a file, not a model folder",
            file=str(path),
            **_field(),
            expected="a folder with config.json and weights (or a built-in model name)",
        )
    return path


def read_model_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a model folder, as a dict, with one-line errors for a missing or broken file."""
    config_file = path / "config.json"
    if not config_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise UserError(
            f"no config.json in the folder (found: {', '.join(found) or 'nothing'})",
            file=str(path),
            **_field(),
            expected="a Hugging Face model folder with config.json",
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise UserError(
            f"invalid JSON ({getattr(error, 'msg', error)})",
            file=str(config_file),
            line=line,
            **_field(),
            expected="the model's config.json",
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            "not a JSON object", file=str(config_file), **_field(), expected="the model's config.json"
        )
    return data


def check_weights(path: Path) -> None:
    """A folder without weights would load as a randomly initialised model: refuse it."""
    if any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        return
    found = sorted(p.name for p in path.iterdir() if p.name != "config.json")[:8]
    raise UserError(
        f"no model weights in the folder (found: {', '.join(found) or 'only config.json'})",
        file=str(path),
        **_field(),
        expected="*.safetensors or pytorch_model*.bin files",
    )


def register_native_models() -> None:
    """Import glmtune's native model packages (the subpackages of ``glmtune.models``): each registers its classes
    with transformers' Auto classes on import. One that cannot be imported (a missing optional dependency) is
    skipped: its folders then need remote code, as without glmtune."""
    import importlib
    import pkgutil

    import glmtune.models

    for package in pkgutil.iter_modules(glmtune.models.__path__, "glmtune.models."):
        if package.ispkg:
            try:
                importlib.import_module(package.name)
            except ImportError:
                pass


def check_model_type(path: Path, config: dict[str, Any], trust_remote_code: bool) -> str:
    """Make sure transformers (or a glmtune native model) knows the architecture, or remote code is allowed."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type and model_type not in CONFIG_MAPPING:
        register_native_models()
    if not model_type:
        if trust_remote_code and "auto_map" in config:
            return ""
        raise UserError(
            "config.json has no model_type",
            file=str(path / "config.json"),
            **_field(),
            expected="a Hugging Face model folder",
        )
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        where = (
            "with its own code (auto_map in config.json)"
            if "auto_map" in config
            else "unknown to transformers"
        )
        raise UserError(
            f"model type '{model_type}' is {where}",
            file=str(path),
            **_field(),
            expected="a model type transformers supports, or set model.trust_remote_code: true "
            "if you trust the code in this folder",
        )
    return model_type


def check_model_folder(cfg: ModelConfig) -> Path:
    """Every check a full load makes (folder, config.json, weights, model type), without loading anything."""
    return _prepare(cfg, need_weights=True)[0]


def _prepare(cfg: ModelConfig, *, need_weights: bool) -> tuple[Path, str]:
    _offline()
    path = resolve_path(cfg)
    config = read_model_config(path)
    if need_weights:
        check_weights(path)
    return path, check_model_type(path, config, cfg.trust_remote_code)


def override_dropout(config: Any, dropout: float) -> list[str]:
    """Set every ``*dropout*`` probability in ``config`` (and its sub-configs) to ``dropout``; returns their names."""
    from transformers import PretrainedConfig

    changed = []
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            changed += [f"{key}.{name}" for name in override_dropout(value, dropout)]
        elif "dropout" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(config, key, float(dropout))
            changed.append(key)
    return changed


def override_config(config: Any, overrides: dict[str, Any]) -> None:
    """Set settings the model must be built with (P-tuning's ``pre_seq_len``…) before it is instantiated.

    Each must already be a field of ``config``: a setting the architecture does not know would be silently ignored.
    """
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise UserError(
                f"model type '{getattr(config, 'model_type', '?')}' has no '{key}' setting",
                **_field(),
                expected=f"a model whose config has '{key}'",
            )
        setattr(config, key, value)


def keep_first_layers(config: Any, num_layers: int) -> None:
    """Build the model with only its first ``num_layers`` layers (the checkpoint's other layers are skipped).

    Middle layers of small LMs classify about as well as the last one, at a fraction of the compute.
    """
    total = config.num_hidden_layers
    if num_layers > total:
        raise UserError(
            f"got {num_layers} but the model has {total} layers",
            field="model.num_layers",
            expected=f"1..{total}",
        )
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Gemma 3, …)
        config.layer_types = config.layer_types[:num_layers]


@contextmanager
def _quiet_loading_report(quiet: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_config(cfg: ModelConfig) -> Any:
    """The model's ``PretrainedConfig`` (no weights read): what callers check before building the model."""
    from transformers import AutoConfig

    path, _ = _prepare(cfg, need_weights=False)
    return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, local_files_only=True)


def attention(cfg: ModelConfig, model_config: Any = None) -> str | None:
    """The attention kernel to build the model with; None: the model's default (sdpa where supported).

    ``auto`` is ``eager`` on a CPU-only machine for transformers' own model classes: a LoRA SFT step there was
    10–13% faster with it at 48–256 tokens (``benchmarks/sft_throughput.py``), the CPU flash-attention backward
    being slow at these lengths. It keeps the attention probabilities for the backward ([batch, heads, seq, seq]):
    for sequences of thousands of tokens on a CPU, ``model.attn_implementation: sdpa`` uses less memory. Models
    whose config class is not transformers' (glmtune's native models, whose eager path is their fp32 reference for
    parity checks; remote code) keep their default."""
    import torch

    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    own = model_config is None or type(model_config).__module__.startswith("transformers.")
    return None if torch.cuda.is_available() or not own else "eager"


def _from_pretrained(
    auto_class: Any, cfg: ModelConfig, dropout: float | None, config_overrides: dict[str, Any] | None = None
) -> Any:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig

    path, model_type = _prepare(cfg, need_weights=True)
    common = {"trust_remote_code": cfg.trust_remote_code, "local_files_only": True}
    config = AutoConfig.from_pretrained(path, **common)
    if dropout is not None:
        override_dropout(config, dropout)
    override_config(config, config_overrides or {})
    if cfg.num_layers is not None:
        keep_first_layers(config, cfg.num_layers)
    quantization = bnb_config(cfg)  # None, or bitsandbytes 4-bit/8-bit (models.quant)
    if quantization is not None:
        common["quantization_config"] = quantization
    try:
        with _quiet_loading_report(cfg.num_layers is not None):  # skipped top layers are expected, not news
            model = auto_class.from_pretrained(
                path,
                config=config,
                dtype=getattr(torch, cfg.dtype),
                attn_implementation=attention(cfg, config),
                **common,
            )
        unpack_on_cpu(model)  # narrow layers cannot take bitsandbytes' packed CPU layout
        return model
    except (
        SafetensorError,
        pickle.UnpicklingError,
        EOFError,
    ) as error:  # truncated, corrupt or unsafe pickle
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"cannot read the weights ({reason[:200]})",
            file=str(path),
            **_field(),
            expected="complete *.safetensors or plain-tensor pytorch_model*.bin files",
        ) from None
    except ValueError as error:
        if not str(error).startswith("Unrecognized configuration class"):
            raise
        kind = "a causal LM" if auto_class.__name__ == "AutoModelForCausalLM" else "a transformer body"
        raise UserError(
            f"model type '{model_type}' cannot be loaded as {kind}",
            file=str(path),
            **_field(),
            expected="a decoder-only (causal LM) model",
        ) from None


def load_causal_lm(
    cfg: ModelConfig, *, dropout: float | None = None, config_overrides: dict[str, Any] | None = None
) -> Any:
    """The model with its LM head (generation, chat, export), in ``cfg.dtype``, in eval mode.

    ``config_overrides`` are set on the config before the model is built (``methods.config_overrides``)."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, cfg, dropout, config_overrides)


def load_backbone(
    cfg: ModelConfig, dropout: float | None = None, config_overrides: dict[str, Any] | None = None
) -> Any:
    """The transformer body without the LM head (``AutoModel``): classification never needs vocab logits.

    ``config_overrides`` are set on the config before the model is built (``methods.config_overrides``)."""
    from transformers import AutoModel

    return _from_pretrained(AutoModel, cfg, dropout, config_overrides)


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer, with a pad token (falls back to eos) and, for Gemma, a leading <bos>."""
    from transformers import AutoTokenizer

    path, model_type = _prepare(cfg, need_weights=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError):
        if any((path / name).exists() for name in TOKENIZER_FILES):
            raise  # a tokenizer is there and failed: a real problem, keep the traceback
        found = sorted(p.name for p in path.iterdir())[:8]
        raise UserError(
            f"no tokenizer in the folder (found: {', '.join(found)})",
            file=str(path),
            **_field(),
            expected="tokenizer.json, tokenizer.model or vocab files next to config.json",
        ) from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(
                "the tokenizer has no pad, eos or unk token",
                file=str(path),
                **_field(),
                expected="a tokenizer with at least an eos token",
            )
        tokenizer.pad_token = fallback
    if model_type in NEEDS_BOS:
        _ensure_bos(tokenizer, path)
    return tokenizer


def _ensure_bos(tokenizer: Any, path: Path) -> None:
    def starts_with_bos() -> bool:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[0] == tokenizer.bos_token_id

    if tokenizer.bos_token_id is None or starts_with_bos():
        return
    tokenizer.add_bos_token = True  # transformers rebuilds the post-processor
    if not starts_with_bos():
        raise RuntimeError(f"{path}: cannot make the tokenizer add {tokenizer.bos_token}")


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (masked out either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, list):  # some configs list several EOS ids
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise UserError(
        "the tokenizer has neither a pad nor an EOS token", expected="a tokenizer with one of them"
    )
