"""Which field of a record holds what: ``data.columns`` (and a dataset_info.json entry's ``columns`` and ``tags``)
as one ``Keys`` object that every reader asks, so errors name the user's own field names.

A record's fields have canonical names (``instruction``, ``messages``, ``text``, ...: ``DATA_COLUMNS``); ``Keys``
maps each to the file's name (itself when unmapped). Inside a conversation turn, ``role_tag``/``content_tag`` name
the keys of the speaker and the text (unset: detected from the turns), and ``user_tag``, ``assistant_tag``,
``system_tag``, ``observation_tag``, ``function_tag`` add role names of the file to the ones always understood.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from glmtune.core.config.model_data import DATA_COLUMNS, DATA_TAGS

# Role names understood in each kind of conversation file → ours: the messages format's (role/content turns;
# "observation" is ChatGLM3's name for a tool result) and sharegpt's (from/value turns; "function_call" is a tool
# call, its value the call as JSON).
MESSAGE_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "observation": "tool",
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}
# A tag → the role it names.
_TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
    "observation_tag": "tool",
    "function_tag": "function_call",
}


@dataclass(frozen=True)
class Keys:
    """The file's names for the canonical fields (see the module docstring)."""

    mapping: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, *mappings: Mapping[str, str] | None) -> Keys:
        """Keys from several mappings; a later one wins (a dataset's own columns over ``data.columns``)."""
        merged: dict[str, str] = {}
        for mapping in mappings:
            merged.update(mapping or {})
        return cls(merged)

    def column(self, name: str) -> str:
        """The file's name for the canonical field ``name``."""
        assert name in DATA_COLUMNS, name
        return self.mapping.get(name, name)

    def given(self, name: str) -> bool:
        """Whether the user mapped ``name`` (a column or a tag)."""
        return name in self.mapping

    def tag(self, name: str) -> str | None:
        """A tag's value (``role_tag``, ``user_tag``, ...), or None when not given."""
        assert name in DATA_TAGS, name
        return self.mapping.get(name)

    def roles(self, base: Mapping[str, str]) -> dict[str, str]:
        """Role names of the file → ours (``user``, ``assistant``, ``system``, ``tool``, ``function_call``):
        ``base`` (``MESSAGE_ROLES`` or ``SHAREGPT_ROLES``) and the tags."""
        roles = dict(base)
        for tag, role in _TAG_ROLES.items():
            if self.tag(tag) is not None:
                roles[self.mapping[tag]] = role
        return roles


__all__ = ["MESSAGE_ROLES", "SHAREGPT_ROLES", "Keys"]
