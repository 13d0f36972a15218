"""Fine-tuning methods: which parameters train, decided here once; and how their weights are saved and loaded.

- ``full``: every parameter of the body and the head.
- ``freeze``: only the top ``method.trainable_layers`` transformer layers (+ the final norm) and the head.
- ``lora``: peft LoRA adapters on the chosen linear layers (never an LM output layer) and the head.

The classification head always trains. Saved weights are only what training changed: a PEFT-compatible
``adapter/`` folder for LoRA, ``body.safetensors`` (the trainable body tensors) for full/freeze, and
``head.safetensors`` — so a run folder is small and reloads onto the same base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glmtune.config import MethodConfig
from glmtune.errors import UserError
from glmtune.runs import RunDir, atomic_dir, atomic_path

# LM output projections: LoRA on them would touch the 100k+-vocab matrix for nothing (and ChatGLM3's
# official recipes never target ``output_layer``).
OUTPUT_LAYERS = ("lm_head", "output_layer")


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


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Find the stack of transformer blocks: the longest ModuleList (``model.layers``, ``encoder.layers``…)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (best is None or len(module) > len(best[1]))
        ):
            best = (name, module)
    if best is None:
        raise UserError(
            "cannot find the transformer layers of this model",
            field="method.name",
            expected="a model with a list of layers, or method.name: full or lora",
        )
    return best


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


def _lora(backbone: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target,
        exclude_modules=[m for m in OUTPUT_LAYERS if m in present and m not in cfg.lora_target] or None,
        bias="none",
    )
    try:
        return get_peft_model(backbone, lora_config)
    except ValueError as error:  # peft: target modules not found in the model
        raise UserError(
            str(error).split("\n")[0],
            field="method.lora_target",
            expected="module names of this model, or all-linear",
        ) from None


def apply(classifier: nn.Module, cfg: MethodConfig) -> ParamCount:
    """Decide what trains. ``classifier`` has ``.backbone`` and ``.head``; LoRA replaces ``.backbone``."""
    if cfg.name == "full":
        classifier.backbone.requires_grad_(True)
    elif cfg.name == "freeze":
        _freeze_all_but_top(classifier.backbone, cfg.trainable_layers)
    elif cfg.name == "lora":
        classifier.backbone = _lora(classifier.backbone, cfg)
    classifier.head.requires_grad_(True)
    return count_parameters(classifier)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes, keyed as in ``model.state_dict()``."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def save(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    """Write what training changed into the run folder, atomically (adapter/, body.safetensors, head)."""
    if cfg.name == "lora":
        with atomic_dir(run.adapter) as tmp:
            classifier.backbone.save_pretrained(tmp)
    else:
        body = {k: v.detach().contiguous().cpu() for k, v in trainable_state(classifier.backbone).items()}
        with atomic_path(run.body) as tmp:
            save_file(body, str(tmp))
    head = {k: v.detach().contiguous().cpu() for k, v in classifier.head.state_dict().items()}
    with atomic_path(run.head) as tmp:
        save_file(head, str(tmp))


def load(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    """Put a run's trained weights onto a freshly loaded base classifier (inverse of :func:`save`)."""
    if cfg.name == "lora":
        from peft import PeftModel

        if not run.adapter.is_dir():
            raise UserError(
                "the run has no adapter/ folder", file=str(run.path), expected="a finished LoRA run"
            )
        classifier.backbone = PeftModel.from_pretrained(classifier.backbone, str(run.adapter))
    else:
        _load_into(classifier.backbone, run.body, strict_keys=False)
    _load_into(classifier.head, run.head, strict_keys=True)
    classifier.eval()


def restore(classifier: nn.Module, cfg: MethodConfig, run: RunDir) -> None:
    """Load the run folder's (best) weights back onto a classifier that already has the method applied."""
    if cfg.name == "lora":
        from peft import set_peft_model_state_dict

        adapter = load_file(str(run.adapter / "adapter_model.safetensors"))
        set_peft_model_state_dict(classifier.backbone, adapter)
    else:
        _load_into(classifier.backbone, run.body, strict_keys=False)
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
