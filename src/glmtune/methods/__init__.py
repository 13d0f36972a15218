"""Fine-tuning methods: which parameters train, decided here once; and how their weights are saved and loaded.

- ``full``: every parameter of the body (but an LM output layer the body holds and never calls) and the head.
- ``freeze``: only the top ``method.trainable_layers`` transformer layers (+ the final norm) and the head.
- ``lora``: peft LoRA adapters on the chosen linear layers (never an LM output layer) and the head; or one of
  peft's variants (``method.lora_variant``: DoRA, rsLoRA, PiSSA, OLoRA; ``methods.variants``).
- ``ptuning``: P-tuning v2, the model's own prefix encoder (``method.pre_seq_len`` learned keys and values for
  every layer; ChatGLM3 has one) and the head. The prefix exists only if the model is *built* with it, so
  :func:`config_overrides` says which settings the loader must put into the model's config first.
- ``prompt_tuning`` / ``p_tuning``: peft soft prompts, ``method.num_virtual_tokens`` learned input embeddings put
  before every input — learned directly (Lester et al. 2021) or produced by a small MLP encoder (P-tuning, Liu
  et al. 2021) — and the head; any model. peft drops position ids with them (rows are right-padded, so the
  default positions are the same) and returns the virtual positions first, which the model wrappers drop.

Methods work on any model with ``.backbone`` and ``.head``: a classifier (``models.SequenceClassifier``: a body
and a linear head, which always trains) or a language model (``models.CausalLM``: the whole causal LM as
``backbone``, ``head`` None). An LM output layer trains with ``full`` only when the model calls it, i.e. when
there is no separate head (SFT: ``lm_head``/``output_layer`` and embeddings tied to it train). Saved weights are only what training changed: a PEFT-compatible
``adapter/`` folder for LoRA, ``body.safetensors`` (the trainable body tensors; for ptuning the prefix
encoder's) for full/freeze/ptuning, and ``head.safetensors`` — so a run folder is small and reloads onto the
same base model built with the same :func:`config_overrides` (recorded in the run's config.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glmtune.core import _compat
from glmtune.core.config import MethodConfig
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir, atomic_dir, atomic_path
from glmtune.methods import variants
from glmtune.methods.sharding import whole_tensors_fit
from glmtune.methods.speed import fuse_lora, use_fast_dropout
from glmtune.methods.variants import loraplus_b as loraplus_b  # re-exported: LoRA+ (the optimizer's groups)
from glmtune.models.anatomy import transformer_layers

# peft wraps every adapted model through here (training and loading a run back): its warnings about
# transformers' and its own internals, which a user can do nothing about, are filtered once (see _compat).
_compat.filter_library_warnings()

# LM output projections: LoRA on them would touch the 100k+-vocab matrix for nothing (and ChatGLM3's
# official recipes never target ``output_layer``).
OUTPUT_LAYERS = ("lm_head", "output_layer")
PEFT_METHODS = ("lora", "prompt_tuning", "p_tuning")  # saved as a PEFT adapter folder
PROMPT_LEARNING = ("prompt_tuning", "p_tuning")


@dataclass
class ParamCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"trainable params: {self.trainable:,} / {self.total:,} ({share:.3f}%)"


def count_parameters(model: nn.Module) -> ParamCount:
    params = list(model.parameters())
    return ParamCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def config_overrides(cfg: MethodConfig, model_config: Any) -> dict[str, Any]:
    """Settings the model must be built with for this method, checked against its config (``PretrainedConfig``).

    Only ``ptuning`` has any: ``pre_seq_len`` and ``prefix_projection`` make the model create its own P-tuning v2
    prefix encoder. A model whose config has no ``pre_seq_len`` has no such encoder: refused here, before loading.
    """
    if cfg.name != "ptuning":
        return {}
    if not hasattr(model_config, "pre_seq_len"):
        model_type = getattr(model_config, "model_type", None) or type(model_config).__name__
        raise UserError(
            f"model type '{model_type}' has no P-tuning v2 prefix encoder (no pre_seq_len in its config)",
            field="method.name",
            expected="a ChatGLM3 model for ptuning, or method.name: p_tuning / prompt_tuning (peft, any model)",
        )
    return {"pre_seq_len": cfg.pre_seq_len, "prefix_projection": cfg.prefix_projection}


def _freeze_all_but_top(backbone: nn.Module, k: int) -> None:
    prefix, layers = transformer_layers(backbone)
    if k > len(layers):
        raise UserError(
            f"got {k} but the model has {len(layers)} layers",
            field="method.trainable_layers",
            expected=f"1..{len(layers)}",
        )
    backbone.requires_grad_(False)
    for layer in layers[len(layers) - k :]:
        layer.requires_grad_(True)
    # The final norm sits after the layers and shapes every pooled feature: it trains with them.
    for name, module in backbone.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in leaf.lower() and not name.startswith(prefix + "."):
            module.requires_grad_(True)


def _freeze_output_layers(backbone: nn.Module) -> None:
    """An LM output layer inside a body (ChatGLM3's ``output_layer``) is never called by it: keep it out of training
    (and so out of the optimizer and ``body.safetensors``)."""
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in OUTPUT_LAYERS:
            module.requires_grad_(False)


def _prefix_encoder(backbone: nn.Module) -> nn.Module:
    """The model's own P-tuning v2 prefix encoder (built from ``config.pre_seq_len``), at any depth
    (``prefix_encoder`` in a body, ``transformer.prefix_encoder`` in a causal LM)."""
    encoder = next((m for name, m in backbone.named_modules() if name.endswith("prefix_encoder")), None)
    if encoder is None:
        raise UserError(
            "the model was built without a P-tuning v2 prefix encoder",
            field="method.name",
            expected="a ChatGLM3 model loaded with methods.config_overrides (pre_seq_len) for ptuning",
        )
    return encoder


def _lora(backbone: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    from glmtune.models.quant import is_quantized, prepare_for_training

    variants.check_base(cfg.lora_variant, is_quantized(backbone))
    if is_quantized(backbone):  # QLoRA: frozen 4-/8-bit base, fp32 norms/embeddings, adapters on top
        backbone = prepare_for_training(backbone)
    present = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target,
        exclude_modules=[m for m in OUTPUT_LAYERS if m in present and m not in cfg.lora_target] or None,
        bias="none",
        **variants.lora_options(cfg.lora_variant),
    )
    try:
        model = get_peft_model(backbone, lora_config)
    except ValueError as error:  # peft: target modules not found in the model
        raise UserError(
            str(error).split("\n")[0],
            field="method.lora_target",
            expected="module names of this model, or all-linear",
        ) from None
    variants.remember_initial(model, cfg.lora_variant)  # PiSSA/OLoRA: A₀, B₀ for the saved conversion
    use_fast_dropout(model)  # same Bernoulli mask, a quarter of the random draws (models.speed)
    fuse_lora(model)  # same LoRA update, fewer passes over the layer outputs (models.speed); not DoRA's
    return model


def _prompt_learning(backbone: nn.Module, cfg: MethodConfig, causal: bool) -> nn.Module:
    """peft soft prompt (``prompt_tuning``) or P-tuning encoder (``p_tuning``) around ``backbone``: a causal LM
    (``causal``: its logits are used) or a transformer body under a classification head."""
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

    task_type = TaskType.CAUSAL_LM if causal else TaskType.FEATURE_EXTRACTION
    kind = PromptTuningConfig if cfg.name == "prompt_tuning" else PromptEncoderConfig
    return get_peft_model(backbone, kind(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens))


def apply(classifier: nn.Module, cfg: MethodConfig) -> ParamCount:
    """Decide what trains. ``classifier`` has ``.backbone`` and ``.head`` (None for a causal LM); LoRA replaces
    ``.backbone``."""
    if cfg.name == "full":
        classifier.backbone.requires_grad_(True)
        if classifier.head is not None:  # a classifier never calls the LM output layer
            _freeze_output_layers(classifier.backbone)
    elif cfg.name == "freeze":
        _freeze_all_but_top(classifier.backbone, cfg.trainable_layers)
    elif cfg.name == "lora":
        classifier.backbone = _lora(classifier.backbone, cfg)
    elif cfg.name in PROMPT_LEARNING:
        classifier.backbone = _prompt_learning(classifier.backbone, cfg, causal=classifier.head is None)
    elif cfg.name == "ptuning":
        prefix_encoder = _prefix_encoder(classifier.backbone)
        classifier.backbone.requires_grad_(False)
        prefix_encoder.requires_grad_(True)
    if classifier.head is not None:
        classifier.head.requires_grad_(True)
    return count_parameters(classifier)


def trainable_state(
    model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors that training changes, keyed as in ``model.state_dict()`` (taken from ``state`` if given)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in (model.state_dict() if state is None else state).items() if k in names}


def save(
    classifier: nn.Module, cfg: MethodConfig, run: RunDir, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write what training changed into the run folder, atomically (adapter/, body.safetensors, head).

    ``state``: the trainable tensors, whole, keyed as in ``classifier.state_dict()``, for a sharded model (FSDP)
    whose parameters are only this process's slices (``glmtune.train.sharded.trainable_state`` gathers them)."""
    body_state = _part(state, "backbone.")
    if cfg.name in PEFT_METHODS:
        with atomic_dir(run.adapter) as tmp:  # PiSSA/OLoRA: converted to a LoRA on the original base
            variants.save_adapter(classifier.backbone, cfg.lora_variant, tmp, state_dict=body_state)
    else:
        trained = trainable_state(classifier.backbone, body_state)
        body = {k: v.detach().contiguous().cpu() for k, v in trained.items()}
        with atomic_path(run.body) as tmp:
            save_file(body, str(tmp))
    if classifier.head is None:
        return
    head_state = _part(state, "head.") or classifier.head.state_dict()
    head = {k: v.detach().contiguous().cpu() for k, v in head_state.items()}
    with atomic_path(run.head) as tmp:
        save_file(head, str(tmp))


def _part(state: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The tensors of ``state`` under ``prefix``, the prefix dropped (None when there is no ``state``)."""
    if state is None:
        return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    """Put a run's trained weights onto a freshly loaded base classifier (inverse of :func:`save`)."""
    if cfg.name in PEFT_METHODS:
        from peft import PeftModel

        if not run.adapter.is_dir():
            raise UserError(
                "the run has no adapter/ folder", file=str(run.path), expected="a finished peft (LoRA…) run"
            )
        # Any LoRA variant onto the untouched base: PiSSA/OLoRA were saved as a plain LoRA on it (variants).
        classifier.backbone = PeftModel.from_pretrained(classifier.backbone, str(run.adapter))
    else:
        _load_into(classifier.backbone, run.body, strict_keys=False)
    if classifier.head is not None:
        _load_into(classifier.head, run.head, strict_keys=True)
    classifier.eval()


def restore(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    """Load the run folder's (best) weights back onto a classifier that already has the method applied (under
    FSDP each process keeps its slice of them)."""
    with whole_tensors_fit(classifier):
        _restore(classifier, cfg, run)


def _restore(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    if cfg.name in PEFT_METHODS:
        from peft import set_peft_model_state_dict

        adapter = variants.read_adapter(run.adapter, cfg.lora_variant, cfg.lora_r)  # as the model holds it
        set_peft_model_state_dict(classifier.backbone, adapter)
        if cfg.name == "p_tuning":
            # peft saves P-tuning's prompt embeddings (its encoder's output, what inference uses), not the
            # encoder: used as they are from here on, as in a model loaded from the adapter folder.
            classifier.backbone.active_peft_config.inference_mode = True
    else:
        _load_into(classifier.backbone, run.body, strict_keys=False)
    if classifier.head is not None:
        _load_into(classifier.head, run.head, strict_keys=True)


def _load_into(module: nn.Module, path: Path, *, strict_keys: bool) -> None:
    if not path.is_file():
        raise UserError("missing weights file", file=str(path), expected="a finished run")
    state = load_file(str(path))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or (strict_keys and missing):
        raise UserError(
            f"weights do not fit the model (unexpected {unexpected[:3]}, missing {missing[:3]})",
            file=str(path),
            expected="weights saved from the same base model",
        )
