"""Back-translation with a model glmtune can talk to, for ``data.augment.back_translation: FOLDER``.

FOLDER is an SFT run folder (e.g. one trained on a translation dataset), a chat model folder or a built-in
model name. Each training text goes through ``data.augment.back_translation_prompts`` in turn — by default
into English, then back into Chinese — as one user turn, answered greedily in batches by ``glmtune.infer.lm``;
the last answer is the paraphrase. :func:`back_translator` picks this or the user's own ``module:function``
hook; the training tasks pass the result to ``glmtune.data.augment`` as its ``translate`` callable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

from glmtune.core.config import AugmentConfig
from glmtune.core.errors import UserError

FIELD = "data.augment.back_translation"


class ModelTranslator:
    """``texts → paraphrases`` through ``prompts`` (each with ``{text}``) answered by the model at ``path``."""

    def __init__(
        self, path: str, prompts: Sequence[str], max_new_tokens: int = 256, max_prompt_len: int = 1024
    ):
        self.path = path
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.max_prompt_len = max_prompt_len
        self._loaded = None

    def _load(self):
        from glmtune.infer import lm

        if self._loaded is None:
            try:
                self._loaded = lm.load(self.path)
            except UserError as error:
                raise UserError(
                    f"cannot use {self.path!r} for back-translation: {error}", field=FIELD
                ) from None
            cfg = self._loaded.cfg
            cfg.generate.do_sample = False  # deterministic: the same texts give the same copies
            cfg.generate.max_new_tokens = self.max_new_tokens
            cfg.train.max_seq_len = max(
                cfg.train.max_seq_len, self.max_prompt_len
            )  # whole texts in the prompt
        return self._loaded

    def __call__(self, texts: list[str]) -> list[str]:
        from glmtune.data.conversation import Conversation, Message
        from glmtune.infer import lm

        loaded = self._load()
        for prompt in self.prompts:
            conversations = [
                Conversation([Message("user", prompt.replace("{text}", text))]) for text in texts
            ]
            texts = [row["output"].strip() for row in lm.reply_all(loaded, conversations)]
        return texts


def back_translator(cfg: AugmentConfig) -> Callable[[list[str]], list[str]]:
    """The back-translation callable of ``cfg.back_translation``: the user's ``"package.module:function"``
    (texts → paraphrased texts, imported by the name the user wrote), or, for a model folder, run folder or
    built-in model name, a :class:`ModelTranslator` through ``cfg.back_translation_prompts``. The training
    tasks hand it to ``glmtune.data.augment``, which never imports the inference side."""
    spec = cfg.back_translation or ""
    field = "data.augment.back_translation"
    if ":" not in spec or Path(spec).is_dir():
        return ModelTranslator(spec, cfg.back_translation_prompts)
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UserError(f"cannot load {spec!r}: {error}", field=field, expected="module:function") from None
    if not callable(fn):
        raise UserError(f"{spec!r} is not callable", field=field, expected="a function texts -> texts")
    return fn


def translator_for(cfg: AugmentConfig) -> Callable[[list[str]], list[str]] | None:
    """What ``glmtune.data.augment`` takes as ``translate``: :func:`back_translator`, or None when off."""
    return back_translator(cfg) if cfg.back_translation else None


__all__ = ["ModelTranslator", "back_translator", "translator_for"]
