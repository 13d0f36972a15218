"""Native ChatGLM3 (THUDM/chatglm3-6b) for transformers 5: config, model, tokenizer, chat/tool format.

Importing this package registers the classes with transformers' Auto classes under `model_type="chatglm"`, so an
official folder loads with `AutoConfig` / `AutoModelForCausalLM` / `AutoModel` without `trust_remote_code`.
Nothing here imports the rest of glmtune.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import ChatGLM3Config
from .modeling import ChatGLM3ForCausalLM, ChatGLM3Model, ChatGLM3PreTrainedModel


def _register() -> None:
    """Registers the classes with the Auto factories; a second import (or reload) is a no-op."""
    AutoConfig.register(ChatGLM3Config.model_type, ChatGLM3Config, exist_ok=True)
    AutoModel.register(ChatGLM3Config, ChatGLM3Model, exist_ok=True)
    AutoModelForCausalLM.register(ChatGLM3Config, ChatGLM3ForCausalLM, exist_ok=True)


_register()

__all__ = ["ChatGLM3Config", "ChatGLM3ForCausalLM", "ChatGLM3Model", "ChatGLM3PreTrainedModel"]
