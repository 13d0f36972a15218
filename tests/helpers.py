"""Shared test helpers that are not models: where the repo is, small data (reviews, chats, tool calls, template
conversations), configs for 2-step runs, running the CLI, and talking to a served app.

Tiny models and tokenizers live in ``tests/tiny.py``; fixtures are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from glmtune.data.conversation import Conversation, Message

if TYPE_CHECKING:
    import openai

# The repository root (pyproject.toml, README.md, docs/, examples/, benchmarks/), however deep a test sits.
REPO = Path(__file__).resolve().parents[1]

# For CLI subprocesses: quiet, one thread each.
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

# --------------------------------------------------------------------------- data files

POSITIVE = ["好", "棒", "喜欢", "满意", "推荐", "快", "赞"]
NEGATIVE = ["差", "烂", "失望", "慢", "退货", "贵", "坏"]
FILLER = ["这", "个", "东西", "质量", "服务", "物流", "真", "很", "非常", "有点"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def review(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return "".join(words)


def chat_rows(n: int = 40, seed: int = 0) -> list[dict]:
    """Short one-turn conversations over the tiny tokenizer's characters."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        word = rng.choice(POSITIVE if good else NEGATIVE)
        reply = ("很好" if good else "很差") + "。"
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "这个" + word},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return rows


# --------------------------------------------------------------------------- configs for 2-step runs


def tiny_config(model_dir: Path, data_file: Path, **sections) -> dict:
    """A complete config dict for a 2-step run of the tiny model; ``sections`` override keys per section."""
    cfg = {
        "task": "classification",
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_file": str(data_file), "validation_size": 16, "test_size": 16},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {
            "max_steps": 2,
            "warmup_ratio": 0.0,  # a warm-up step would run at lr 0 and leave the zero-init head still
            "batch_size": 8,
            "lr": 1e-2,
            "max_seq_len": 32,
            "log_steps": 1,
            "mixed_precision": "no",
        },
        "eval": {"batch_size": 16},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


def sft_config(model_dir: Path, data: dict, **sections) -> dict:
    """A complete ``task: sft`` config dict for a 2-step run; ``sections`` override keys per section."""
    cfg = {
        "task": "sft",
        "model": {"name_or_path": str(model_dir)},
        "data": {"template": "plain", "validation_size": 6, "test_size": 6, **data},
        "method": {"name": "lora", "lora_r": 4, "lora_alpha": 8},
        "train": {
            "max_steps": 2,
            "warmup_ratio": 0.0,
            "batch_size": 8,
            "lr": 1e-2,
            "max_seq_len": 48,
            "log_steps": 1,
            "mixed_precision": "no",
        },
        "eval": {"batch_size": 4},
        "generate": {"max_new_tokens": 6},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


# --------------------------------------------------------------------------- the CLI


def write_config(tmp_path: Path, cfg: dict) -> Path:
    """``cfg`` as ``tmp_path/cfg.yaml``."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def train(tmp_path: Path, cfg: dict, *extra: str) -> Path:
    """``glmtune train`` in process on ``cfg`` into ``tmp_path/run``; returns the run folder."""
    from glmtune.cli import main

    out = tmp_path / "run"
    main(["train", str(write_config(tmp_path, cfg)), "--output", str(out), *extra])
    return out


def run_cli(tmp_path: Path, cfg: dict, *extra: str, capsys) -> str:
    """``glmtune train`` on a bad ``cfg``: exit code 2 and one line on stderr (returned), no traceback."""
    from glmtune.cli import main

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(cfg_path), "--output", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def assert_nothing_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not run.exists() or not any(run.iterdir()), "the run folder must stay untouched"


def assert_predict_reproduces(run: Path, capsys, atol: float = 1e-4) -> None:
    """``glmtune predict`` rebuilds the model from config.yaml and gives the probabilities written at test time."""
    from glmtune.cli import main

    written = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(written) == 16
    capsys.readouterr()
    main(["predict", str(run), "--text", written[0]["text"]])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for label, p in written[0]["probs"].items():
        assert again["probs"][label] == pytest.approx(p, abs=atol)


def glmtune_chat(*args: str, lines: str):
    """``glmtune chat ARGS`` in a fresh process with ``lines`` on stdin."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "chat", *args],
        input=lines,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


# --------------------------------------------------------------------------- a served app


@contextlib.contextmanager
def running(app, log_level: str = "warning", after_config=None):
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields the base URL. ``after_config()``
    runs once uvicorn's loggers are set up (e.g. ``serve``'s access-log filter)."""
    import uvicorn

    from glmtune.infer.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    if after_config is not None:
        after_config()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def client(url: str, key: str = "unused", **kwargs) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **kwargs)


# --------------------------------------------------------------------------- ChatGLM3 tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆", "天津", "苏州"]


def tool_rows() -> list[dict]:
    rows = []
    for i, city in enumerate(CITIES):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        rows.append(
            {
                "tools": [WEATHER],
                "messages": [
                    {"role": "system", "content": "你是一个助手。"},
                    {"role": "user", "content": f"{city}天气怎么样？"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {
                        "role": "observation",
                        "content": json.dumps({"temperature": 20 + i}, ensure_ascii=False),
                    },
                    {"role": "assistant", "content": f"{city}现在{20 + i}度。"},
                ],
            }
        )
    return rows


# --------------------------------------------------------------------------- chat-template test data

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = {
    "chatml": (["<|im_start|>", "<|im_end|>"], "<|endoftext|>", "<|im_end|>"),
    "gemma": (["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "llama3": (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>"),
    "plain": ([], "<s>", "</s>"),
}

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "查询城市天气",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}


SINGLE = Conversation([Message("user", "你好，今天天气怎么样？"), Message("assistant", "今天天气很好。")])
MULTI = Conversation(
    [
        Message("system", "You are a concise assistant.\n"),
        Message("user", "  What is 2+2?\n"),
        Message("assistant", "4\n\n"),
        Message("user", "And 3+3?"),
        Message("assistant", "\nIt is 6, of course."),
        Message("user", "谢谢"),
        Message("assistant", "不客气！"),
    ]
)
TOOLS = Conversation(
    [
        Message("system", "你是天气助手。"),
        Message("user", "北京和上海今天天气如何？"),
        Message("assistant", "", [CALL]),
        Message("tool", '{"temperature": 20, "sky": "晴"}'),
        Message("tool", '{"temperature": 25, "sky": "多云"}'),
        Message("assistant", "北京晴，20度。"),
        Message("user", "明天呢？"),
        Message("assistant", "我查一下。", [CALL]),
        Message("tool", "雨"),
        Message("assistant", "明天北京有雨。"),
    ],
    tools=[TOOL],
)
CORPUS = [m.content for conv in (SINGLE, MULTI, TOOLS) for m in conv.messages] + [
    json.dumps(TOOL, ensure_ascii=False),
    "system\nuser\nassistant\nmodel\n<tool_call>\n</tool_call>\n<tool_response>\n</tool_response>\n# Tools",
    "You may call one or more functions to assist with the user query. You are provided with function signatures",
    "Hi Hello Hi Hello",
]


def bpe_tokenizer(name: str, chat_template: str | None):
    """A byte-level BPE trained on the test texts, with ``name``'s special tokens and ``chat_template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos = SPECIALS[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    all_specials = list(dict.fromkeys([bos, eos, "<pad>", *specials]))
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=all_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
        additional_special_tokens=[s for s in specials if s not in (bos, eos)],
        chat_template=chat_template,
    )


def hf_messages(conv: Conversation) -> list[dict]:
    """A ``Conversation``'s messages as the dicts a Hugging Face chat template takes."""
    rows = []
    for m in conv.messages:
        row = {"role": m.role, "content": m.content}
        if m.tool_calls:
            row["tool_calls"] = m.tool_calls
        rows.append(row)
    return rows
