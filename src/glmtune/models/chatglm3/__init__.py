"""Native ChatGLM3 (THUDM/chatglm3-6b) for transformers 5: config, model, tokenizer, chat/tool format.

Importing this package registers the classes with transformers' Auto classes under `model_type="chatglm"`, so an
official folder loads with `AutoConfig` / `AutoModelForCausalLM` / `AutoModel` without `trust_remote_code`.
Nothing here imports the rest of glmtune: what its users need to know is declared, not inferred from the name.
The tokenizer's `chat_format()` returns the chat/tool format bound to it (`chat_format.ChatGLM3Format`);
`ChatGLM3Config.native_import` / `native_family` say how a saved folder loads back; the causal LM declares
`boolean_logits_to_keep`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .chat_format import CHATGLM3, ChatGLM3Format, encode_conversation, encode_prompt, parse_reply, stop_ids
from .configuration import ChatGLM3Config
from .modeling import ChatGLM3ForCausalLM, ChatGLM3Model, ChatGLM3PreTrainedModel
from .tokenizer import ChatGLM3Tokenizer


def _register() -> None:
    """Registers the classes with the Auto factories; a second import (or reload) is a no-op."""
    AutoConfig.register(ChatGLM3Config.model_type, ChatGLM3Config, exist_ok=True)
    AutoModel.register(ChatGLM3Config, ChatGLM3Model, exist_ok=True)
    AutoModelForCausalLM.register(ChatGLM3Config, ChatGLM3ForCausalLM, exist_ok=True)
    AutoTokenizer.register(ChatGLM3Config, tokenizer_class=ChatGLM3Tokenizer, exist_ok=True)
    # Official folders name their class "ChatGLMTokenizer" (tokenizer_config.json); without this alias
    # AutoTokenizer silently falls back to a generic TokenizersBackend that yields wrong ids.
    try:
        from transformers.models.auto.tokenization_auto import REGISTERED_TOKENIZER_CLASSES
    except ImportError:  # moved in a later transformers: ChatGLM3Tokenizer.from_pretrained still works
        return
    REGISTERED_TOKENIZER_CLASSES.setdefault("ChatGLMTokenizer", ChatGLM3Tokenizer)


_register()

__all__ = [
    "CHATGLM3",
    "ChatGLM3Config",
    "ChatGLM3ForCausalLM",
    "ChatGLM3Format",
    "ChatGLM3Model",
    "ChatGLM3PreTrainedModel",
    "ChatGLM3Tokenizer",
    "encode_conversation",
    "encode_prompt",
    "parse_reply",
    "stop_ids",
]
