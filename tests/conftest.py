"""Shared fixtures: the tiny random Llama and ChatGLM3 saved as normal HF folders, and small data files.

The builders live in ``tests/tiny.py`` (models, tokenizers) and ``tests/helpers.py`` (data, configs, the CLI);
everything is built from a config: no network, no real weights, milliseconds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.helpers import chat_rows, review, write_jsonl
from tests.tiny import save_tiny_chatglm3, save_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama of width 32 with a char tokenizer, saved with safetensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_served(tiny_model_dir) -> dict:
    """``glmtune serve``'s registry over the tiny Llama (plain template), by its name ``tiny_model_dir.name``."""
    from glmtune.infer.serve.registry import load_models

    return load_models([str(tiny_model_dir)], template="plain")


@pytest.fixture(scope="module")
def chatglm3_dir(tmp_path_factory) -> Path:
    """The official config.json shrunk to 2 layers of width 64, random weights, the real tokenizer (65,024 ids).

    Skips without ../shared/chatglm3. Built once per test module, as when each module imported it."""
    return save_tiny_chatglm3(tmp_path_factory.mktemp("tiny-chatglm3"))


@pytest.fixture
def sentiment_file(tmp_path) -> Path:
    """96 short synthetic reviews, balanced, in JSONL with text/label columns."""
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


@pytest.fixture
def chat_file(tmp_path) -> Path:
    """40 short one-turn conversations (``helpers.chat_rows``) in JSONL with a messages column."""
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows())


@pytest.fixture
def reset_accelerate():
    """accelerate keeps process-wide singletons; reset them so each in-process run starts clean."""
    from glmtune.train import reset_process_state

    reset_process_state()
    yield
    reset_process_state()
