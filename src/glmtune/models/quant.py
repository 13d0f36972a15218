"""bitsandbytes 4-bit/8-bit weights on load (``model.quantization``), and QLoRA's preparation for training.

transformers does the work: ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` replaces each
``nn.Linear`` but the LM output layer by ``bnb.nn.Linear4bit``/``Linear8bitLt`` as the weights load, so the
full-precision model never sits in memory. Training quantized weights is QLoRA (Dettmers et al. 2023): the base
stays frozen and quantized, LoRA adapters (and a classification head) train in full precision, which is why
``config`` allows quantization with ``method: lora`` only. A run records its ``model`` section, so predict,
chat, eval and serve load the base quantized exactly as it was trained; ``export --merge`` loads it unquantized
(merging into 4-bit weights would add a second rounding), as LLaMA-Factory does.

bitsandbytes 0.50 has a CPU backend (4-bit and 8-bit, forward and backward): what this project's tests run on.
Its CPU inference layout for 4-bit weights must be kept out of training (``unpack_on_cpu``).
"""

from __future__ import annotations

from typing import Any

from glmtune.core import _compat
from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError

CPU_BLOCK = 64  # bitsandbytes' 4-bit block size: input features per absmax on the CPU kernel


def bnb_config(cfg: ModelConfig) -> Any:
    """``BitsAndBytesConfig`` for ``cfg.quantization`` (None when ``none``); 4-bit computes in ``cfg.dtype``."""
    if cfg.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise UserError(
            f"bitsandbytes cannot be imported ({error})",
            field="model.quantization",
            expected="pip install bitsandbytes (a glmtune dependency), or quantization: none",
        ) from None
    if cfg.quantization == "8bit":
        # LLM.int8() quantizes fp16 activations, so bitsandbytes casts any other dtype — and logs it on every
        # Linear call of every step. The cast is the method, not news: that one logger stays at errors.
        _compat.quiet_int8_cast_log()
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.dtype),
    )


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (a transformers model) was loaded with bitsandbytes weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def unpack_on_cpu(model: Any, *, everywhere: bool = False) -> None:
    """Keep 4-bit weights out of bitsandbytes' packed CPU inference layout where it would break things.

    On CPUs with AVX512-BF16, a ``Linear4bit`` repacks its weight on the first eval-mode, no-grad forward, for
    fast inference. That layout (1) needs ``in_features`` in whole blocks of 64, else the repacking fails, and
    (2) is multiplied by ``gemv_4bit``, which has no autograd kernel: after one evaluation, training would pass
    *no* gradient through the frozen weights to the adapters below them (silently; torch only warns). So
    repacking stays off for narrow layers always, and everywhere (``everywhere``) in a model that trains.
    """
    if not getattr(model, "is_loaded_in_4bit", False):
        return
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit) and (everywhere or module.in_features % CPU_BLOCK):
            module.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward before repacking


def prepare_for_training(model: Any) -> Any:
    """peft's QLoRA preparation: every quantized weight frozen, the remaining half-precision tensors (norms,
    embeddings) in fp32 for stable training. Gradient checkpointing stays ``train.gradient_checkpointing``'s
    (peft would switch it on); the model wrappers make the inputs require grad when it is on."""
    from peft import prepare_model_for_kbit_training

    unpack_on_cpu(model, everywhere=True)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
