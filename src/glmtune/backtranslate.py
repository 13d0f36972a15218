"""Back-translation with a model glmtune can talk to, for ``data.augment.back_translation: FOLDER``.

FOLDER is an SFT run folder (e.g. one trained on a translation dataset), a chat model folder or a built-in
model name. Each training text goes through ``data.augment.back_translation_prompts`` in turn — by default
into English, then back into Chinese — as one user turn, answered greedily in batches by ``glmtune.replies``;
the last answer is the paraphrase. ``data.augment`` loads this module by name, like a user's own
``module:function`` hook, so the data layer never imports the generation stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from glmtune.errors import UserError

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
        from glmtune import replies

        if self._loaded is None:
            try:
                self._loaded = replies.load(self.path)
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
        from glmtune import replies
        from glmtune.data.conversation import Conversation, Message

        loaded = self._load()
        for prompt in self.prompts:
            conversations = [
                Conversation([Message("user", prompt.replace("{text}", text))]) for text in texts
            ]
            texts = [row["output"].strip() for row in replies.reply_all(loaded, conversations)]
        return texts


__all__ = ["ModelTranslator"]
