"""ChatGLM3's SentencePiece tokenizer as a transformers tokenizer, giving the official ids.

The official `tokenization_chatglm.py` breaks on transformers 5 (moved import paths, `_pad` signature). This is a
native re-implementation of the same behaviour: 64789 SentencePiece pieces, then 9 specials appended in a fixed
order, `[gMASK] sop` prepended to every encoded text, left padding that also pads `position_ids` with 0, and the
chat builders (`build_single_message`, `build_chat_input`) the official chat code and finetune demo use.

Raw text never turns into special tokens by default (`split_special_tokens=True`): a literal "<|user|>" or "sop"
inside user data stays text, exactly like `build_chat_input` and chatglm.cpp encode it. Pass
`split_special_tokens=False` to get the HF-main behaviour (the four tokens its tokenizer_config registers, and
"</s>", are split out of text), or `encode_special_tokens=True` for the official option that matches all 9.
"""

import json
import os
import re
import shutil
from typing import Any

import sentencepiece as spm
from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import PaddingStrategy

# Appended after the SentencePiece vocabulary, in this order: ids 64789 ... 64797 for the official model.
SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)
ROLES = ("system", "user", "assistant", "observation")


class ChatGLM3Tokenizer(PreTrainedTokenizer):
    """ChatGLM3 tokenizer over the official `tokenizer.model` (SentencePiece BPE with byte fallback)."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]
    padding_side = "left"

    def __init__(
        self,
        vocab_file: str,
        padding_side: str = "left",
        clean_up_tokenization_spaces: bool = False,
        encode_special_tokens: bool = False,
        **kwargs: Any,
    ):
        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)
        self.sp_vocab_size = self.sp_model.vocab_size()  # 64789 for the official model
        self.special_token_ids = {token: self.sp_vocab_size + i for i, token in enumerate(SPECIAL_TOKENS)}
        self.special_id_tokens = {i: token for token, i in self.special_token_ids.items()}
        self.encode_special_tokens = encode_special_tokens
        self._special_pattern = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))
        # The official names: eos "</s>" (id 2), pad and unk "<unk>" (id 0); there is no bos in use.
        kwargs.setdefault("eos_token", "</s>")
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("pad_token", "<unk>")
        kwargs.setdefault("split_special_tokens", True)
        # The official tokenizer_config's template text-encodes <|system|>/<|observation|> and ignores tools and
        # metadata; `apply_chat_template` below uses chat_format instead, so the template is not kept.
        kwargs.pop("chat_template", None)
        super().__init__(
            padding_side=padding_side,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            encode_special_tokens=encode_special_tokens,
            **kwargs,
        )

    # ----- vocabulary -----

    @property
    def vocab_size(self) -> int:
        return self.sp_vocab_size + len(SPECIAL_TOKENS)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.sp_vocab_size)}
        vocab.update(self.special_token_ids)
        vocab.update(self.added_tokens_encoder)
        return vocab

    def get_command(self, token: str) -> int:
        """The id of a special token by name, as the official `get_command` ("<eos>", "<pad>", "[gMASK]", ...)."""
        aliases = {
            "<bos>": self.sp_model.bos_id(),
            "<eos>": self.sp_model.eos_id(),
            "<pad>": self.sp_model.unk_id(),
        }
        if token in aliases:
            return aliases[token]
        if token not in self.special_token_ids:
            raise KeyError(f"{token!r} is not a ChatGLM3 special token ({', '.join(SPECIAL_TOKENS)})")
        return self.special_token_ids[token]

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        if not self.encode_special_tokens:
            return self.sp_model.encode_as_pieces(text)
        pieces, start = [], 0
        for match in self._special_pattern.finditer(text):
            if start < match.start():
                pieces.extend(self.sp_model.encode_as_pieces(text[start : match.start()]))
            pieces.append(match.group())
            start = match.end()
        if start < len(text):
            pieces.extend(self.sp_model.encode_as_pieces(text[start:]))
        return pieces

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.special_token_ids:
            return self.special_token_ids[token]
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index in self.special_id_tokens:
            return self.special_id_tokens[index]
        if 0 <= index < self.sp_vocab_size:
            return self.sp_model.id_to_piece(index)
        return ""  # padded-vocab rows (64798...65023) have no token, as in the official tokenizer

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode_pieces(tokens)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """Official `SPTokenizer.decode`: specials by name, runs of ordinary ids through SentencePiece.

        unk/pad (0), bos (1), eos (2) and ids outside the vocabulary decode to nothing, as officially; with
        `skip_special_tokens` the 9 ChatGLM specials are dropped too.
        """
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        dropped = {self.sp_model.unk_id(), self.sp_model.bos_id(), self.sp_model.eos_id()}
        parts, run = [], []
        for index in map(int, token_ids):
            if index in self.special_id_tokens:
                if run:
                    parts.append(self.sp_model.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self.special_id_tokens[index])
            elif 0 <= index < self.sp_vocab_size and index not in dropped:
                run.append(index)
        if run:
            parts.append(self.sp_model.decode(run))
        text = "".join(parts)
        clean_up = (
            clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is not None
            else self.clean_up_tokenization_spaces
        )
        return self.clean_up_tokenization(text) if clean_up else text

    # ----- special tokens and padding -----

    def get_prefix_tokens(self) -> list[int]:
        return [self.special_token_ids["[gMASK]"], self.special_token_ids["sop"]]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """`[gMASK] sop A` for one sequence, `[gMASK] sop A B </s>` for a pair (official)."""
        ids = self.get_prefix_tokens() + token_ids_0
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.sp_model.eos_id()]
        return ids

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            specials = set(self.special_id_tokens) | {self.sp_model.eos_id()}
            return [int(i in specials) for i in token_ids_0]
        mask = [1, 1] + [0] * len(token_ids_0)
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def _pad(
        self,
        encoded_inputs: dict[str, Any] | BatchEncoding,
        max_length: int | None = None,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict:
        """Pads ids with 0, the attention mask with 0 and `position_ids` with 0 (left by default, as officially),
        so real tokens keep positions 0, 1, 2, ... whatever the padding."""
        side = padding_side or self.padding_side
        required = encoded_inputs[self.model_input_names[0]]
        length = len(required)
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = length
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        if return_attention_mask is not False and "attention_mask" not in encoded_inputs:
            encoded_inputs["attention_mask"] = [1] * length
        if "position_ids" not in encoded_inputs:
            encoded_inputs["position_ids"] = list(range(length))
        if padding_strategy != PaddingStrategy.DO_NOT_PAD and max_length is not None and length < max_length:
            fill = max_length - length
            pads = {self.model_input_names[0]: self.pad_token_id, "attention_mask": 0, "position_ids": 0}
            pads["special_tokens_mask"] = 1
            for key, value in pads.items():
                if key in encoded_inputs:
                    padding = [value] * fill
                    current = list(encoded_inputs[key])
                    encoded_inputs[key] = padding + current if side == "left" else current + padding
        return encoded_inputs

    # ----- chat -----

    def chat_format(self):
        """The ChatGLM3 chat/tool format bound to this tokenizer (`chat_format.ChatGLM3Format`): the hook through
        which a template registry finds a format that lives in the tokenizer class rather than a Jinja template."""
        from .chat_format import ChatGLM3Format

        return ChatGLM3Format(self)

    def build_single_message(self, role: str, metadata: str, message: str) -> list[int]:
        """`<|role|>` + encode(metadata + "\\n") + encode(message): no separators, each part with its own "▁"."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        role_token = self.special_token_ids[f"<|{role}|>"]
        return [role_token] + self.sp_model.encode(f"{metadata}\n") + self.sp_model.encode(message)

    def build_chat_input(
        self, query: str, history: list[dict] | None = None, role: str = "user"
    ) -> BatchEncoding:
        """The official generation prompt: history, then `query` as `role`, then `<|assistant|>`.

        Returns a batch of one (`input_ids`, `attention_mask`, `position_ids` as `[1, n]` tensors), as officially.
        History items are `{"role", "content", optional "metadata", optional "tools" (system only)}`.
        """
        ids = list(self.get_prefix_tokens())
        for item in history or []:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids += self.build_single_message(item["role"], item.get("metadata", ""), content)
        ids += self.build_single_message(role, "", query)
        ids.append(self.special_token_ids["<|assistant|>"])
        encoded = {
            "input_ids": [ids],
            "attention_mask": [[1] * len(ids)],
            "position_ids": [list(range(len(ids)))],
        }
        return BatchEncoding(encoded, tensor_type="pt")

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        tools: list[dict] | dict | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        return_tensors: str | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ):
        """Renders conversations with the ChatGLM3 chat format (see `chat_format`), not a Jinja template.

        tokenize=True gives the exact ids `build_chat_input` / the official finetune demo produce (incl. tools,
        tool calls, metadata, observations); tokenize=False gives the same as readable text with special names
        (for logs: re-encoding it does not give the same ids). Other template options are not supported.
        """
        from . import chat_format

        unsupported = {k for k, v in kwargs.items() if v not in (None, False) and k != "tokenizer_kwargs"}
        if unsupported:
            raise TypeError(f"ChatGLM3Tokenizer.apply_chat_template does not support {sorted(unsupported)}")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        rendered = [
            chat_format.encode_prompt(
                self, messages, tools=tools, add_generation_prompt=add_generation_prompt
            )
            for messages in conversations
        ]
        if not tokenize:
            texts = [self.decode(ids) for ids in rendered]
            return texts if batched else texts[0]
        if not return_dict:
            return rendered if batched else rendered[0]
        encoded = self.pad(
            {"input_ids": rendered}, padding=padding or (batched and "longest"), return_tensors=return_tensors
        )
        if not batched and return_tensors is None:
            encoded = BatchEncoding({key: value[0] for key, value in encoded.items()})
        return encoded

    # ----- saving -----

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Writes `tokenizer.model` so a saved folder reloads; the bytes come from memory if the source is gone."""
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        target = os.path.join(save_directory, name) if os.path.isdir(save_directory) else save_directory
        if os.path.abspath(self.vocab_file) == os.path.abspath(target):
            return (target,)
        if os.path.isfile(self.vocab_file):
            shutil.copyfile(self.vocab_file, target)
        else:
            with open(target, "wb") as handle:
                handle.write(self.sp_model.serialized_model_proto())
        return (target,)


__all__ = ["ROLES", "SPECIAL_TOKENS", "ChatGLM3Tokenizer"]
