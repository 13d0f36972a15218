"""Fixtures for the ChatGLM3 tests: the native tokenizer over the official tokenizer.model (skips without it)."""

import pytest

from tests.tiny import require_shared


@pytest.fixture(scope="session")
def tokenizer():
    """The native tokenizer over the official tokenizer.model."""
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))
