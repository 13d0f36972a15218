"""Load any model: a built-in GGUF (converted once to a cached HF folder), a local HF folder, a ChatGLM3 folder.

``load_*`` take a ``ModelConfig``; ``load_classifier`` puts a small fp32 head on the transformer body.
Names resolve lazily, so ``glmtune models`` (``list_models``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BUILTIN_MODELS": "builtin",
    "list_models": "builtin",
    "resolve_builtin": "builtin",
    "CausalLM": "causal",
    "load_language_model": "causal",
    "SequenceClassifier": "heads",
    "load_classifier": "heads",
    "load_backbone": "load",
    "load_causal_lm": "load",
    "load_tokenizer": "load",
}
__all__ = [
    "BUILTIN_MODELS",
    "CausalLM",
    "SequenceClassifier",
    "list_models",
    "load_backbone",
    "load_causal_lm",
    "load_classifier",
    "load_language_model",
    "load_tokenizer",
    "resolve_builtin",
]

if TYPE_CHECKING:
    from glmtune.models.builtin import BUILTIN_MODELS, list_models, resolve_builtin
    from glmtune.models.causal import CausalLM, load_language_model
    from glmtune.models.heads import SequenceClassifier, load_classifier
    from glmtune.models.load import load_backbone, load_causal_lm, load_tokenizer


def __getattr__(name: str) -> Any:
    # Explicit imports (not importlib by string): the import contract sees every dependency.
    module = _EXPORTS.get(name)
    if module == "builtin":
        from glmtune.models import builtin as source
    elif module == "causal":
        from glmtune.models import causal as source
    elif module == "heads":
        from glmtune.models import heads as source
    elif module == "load":
        from glmtune.models import load as source
    else:
        raise AttributeError(f"module 'glmtune.models' has no attribute {name!r}")
    value = getattr(source, name)
    globals()[name] = value
    return value
