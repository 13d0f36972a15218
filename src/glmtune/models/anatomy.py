"""Where things are inside a model: its stack of transformer blocks and its input embeddings.

Contract: finds modules by structure (no model-name tests), through peft and accelerate wrappers; raises UserError
when a model has no such part. Used by methods (freeze), techniques (layer-wise lr, adversarial) and tasks.
"""

from __future__ import annotations

from torch import nn

from glmtune.core.errors import UserError


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


def input_embeddings(model: nn.Module) -> nn.Module:
    """The input-embedding module of a classifier or causal LM (``.backbone``), through peft and accelerate."""
    backbone = getattr(model, "backbone", model)
    return backbone.get_input_embeddings()
