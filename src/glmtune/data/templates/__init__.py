"""Conversation → ``input_ids`` and ``labels``: chat templates, label masks and truncation, in one place.

A template is either the tokenizer's own Jinja ``chat_template`` (``"auto"``), one of the built-in formats in
``templates.yaml`` (``chatml``, ``gemma``, ``llama3``, ``plain``: data, not code), or a format a model's
tokenizer provides itself (a model whose chat format lives in its tokenizer class and tokenizes turn by turn,
not a rendered string: its tokenizer's ``chat_format()``, named in ``registry.TOKENIZER_FORMATS``).

Labels use the transformers convention: ``labels[t] = input_ids[t]`` where learned, ``-100`` elsewhere (the
model shifts them). Every assistant turn is learned, with its end-of-turn token; with ``train_on_prompt`` every
token is. Early rounds are dropped whole to fit ``max_seq_len``, never cut through.

Modules: ``registry`` (which templates exist, ``templates.yaml``) · ``base`` (the ``ChatFormat`` interface and
its capabilities) · ``text`` (rendered templates: built-in and Jinja) · ``native`` (formats tokenizers provide) ·
``resolve`` (name → format) · ``encode`` (conversations → ids, labels, prompts) · ``masks`` (inspection).
"""

from glmtune.data.templates.base import ChatFormat, TokenizerChatFormat
from glmtune.data.templates.encode import (
    EncodedConversation,
    EncodedConversations,
    encode_conversation,
    encode_conversations,
    encode_prompt,
    resolve_for,
    stop_ids,
)
from glmtune.data.templates.masks import render_mask
from glmtune.data.templates.registry import (
    TEMPLATES_FILE,
    Template,
    ToolFormat,
    Turn,
    builtin_templates,
    template_names,
)
from glmtune.data.templates.resolve import resolve_template
from glmtune.models.causal import IGNORE_INDEX  # one definition, re-exported for data users

__all__ = [
    "IGNORE_INDEX",
    "TEMPLATES_FILE",
    "ChatFormat",
    "EncodedConversation",
    "EncodedConversations",
    "Template",
    "TokenizerChatFormat",
    "ToolFormat",
    "Turn",
    "builtin_templates",
    "encode_conversation",
    "encode_conversations",
    "encode_prompt",
    "render_mask",
    "resolve_for",
    "resolve_template",
    "stop_ids",
    "template_names",
]
