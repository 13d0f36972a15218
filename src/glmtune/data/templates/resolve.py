"""A template's name → the ``ChatFormat`` bound to a tokenizer."""

from __future__ import annotations

from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.templates.base import ChatFormat, tokenizer_chat_format
from glmtune.data.templates.native import TokenizerFormat
from glmtune.data.templates.registry import TOKENIZER_FORMATS, builtin_templates, template_names
from glmtune.data.templates.text import BuiltinFormat, JinjaFormat


def _tokenizer_format(tokenizer: Any, name: str) -> TokenizerFormat:
    """The format ``name`` that a model's tokenizer provides; another tokenizer is a UserError."""
    provided = tokenizer_chat_format(tokenizer)
    if provided is None or provided.name != name:
        family = TOKENIZER_FORMATS[name]
        raise UserError(
            f"template '{name}' needs {family}'s own tokenizer",
            field="template",
            expected=f"a {family} model, or another template for this tokenizer",
        )
    return TokenizerFormat(provided)


def resolve_template(tokenizer: Any, template: str = "auto", *, tools: bool = False) -> ChatFormat:
    """The format ``template`` names, bound to ``tokenizer``; a template the tokenizer lacks is a UserError.

    ``auto``: the tokenizer's Jinja ``chat_template`` if it has one, else the format the tokenizer provides
    itself (``chat_format()``, a model whose chat format lives in its tokenizer class); any other tokenizer
    without a chat template is an error. With ``tools`` (the data has tools), ``auto`` prefers whichever of
    the two renders them; when neither does, encoding a conversation with tools is refused
    (``encode.encode_conversation``, naming ``tool_templates``).
    """
    if template == "auto":
        provided = tokenizer_chat_format(tokenizer)
        if getattr(tokenizer, "chat_template", None):
            jinja = JinjaFormat(tokenizer)
            if tools and not jinja.renders_tools and provided is not None:
                return TokenizerFormat(provided)
            return jinja
        if provided is not None:
            return TokenizerFormat(provided)
        raise UserError(
            "the tokenizer has no chat template, so 'auto' has nothing to use",
            field="template",
            expected="one of the built-in templates: " + ", ".join(template_names()),
        )
    if template in TOKENIZER_FORMATS:
        return _tokenizer_format(tokenizer, template)
    templates = builtin_templates()
    if template not in templates:
        raise UserError(
            f"unknown template '{template}'",
            field="template",
            expected="auto or one of: " + ", ".join(template_names()),
        )
    return BuiltinFormat(templates[template], tokenizer)


def tool_templates(tokenizer: Any) -> list[str]:
    """The ``data.template`` values that render tools with this tokenizer (``auto`` when its own template does)."""
    names = []
    if getattr(tokenizer, "chat_template", None) and JinjaFormat(tokenizer).renders_tools:
        names.append("auto")
    provided = tokenizer_chat_format(tokenizer)
    if provided is not None:
        names.append(provided.name)
    for name, template in builtin_templates().items():
        if template.tools is not None:
            try:
                BuiltinFormat(template, tokenizer)
            except UserError:  # the tokenizer lacks its special tokens
                continue
            names.append(name)
    return list(dict.fromkeys(names))


__all__ = ["resolve_template", "tool_templates"]
