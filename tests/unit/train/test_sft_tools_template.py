"""``data.template: auto`` with tools in the data: the SFT task resolves one format for every split knowing
that some conversation has tools, picks the tokenizer's own format when its Jinja template would drop them, and
config.yaml names that format (so predict, chat and serve prompt the model the way it trained)."""

from __future__ import annotations

from glmtune.core import config as config_mod
from glmtune.data.run_config import run_config
from glmtune.train.tasks.sft import SFT
from tests.helpers import CHATML, bpe_tokenizer, tool_rows, write_jsonl
from tests.tiny import require_shared


def test_auto_picks_the_format_that_renders_the_tools_and_records_it(tmp_path, monkeypatch):
    from glmtune.models.chatglm3 import ChatGLM3Tokenizer

    glm = ChatGLM3Tokenizer(vocab_file=str(require_shared("tokenizer.model")))
    tokenizer = bpe_tokenizer("chatml", CHATML)  # its own Jinja template knows nothing of tools ...
    tokenizer.chat_format = glm.chat_format  # ... and it provides a format that does
    monkeypatch.setattr("glmtune.models.load.load_tokenizer", lambda _model: tokenizer)
    plain = [{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}]
    cfg = config_mod.from_dict(
        {
            "task": "sft",
            "model": {"name_or_path": str(tmp_path)},
            "data": {
                "train_file": str(write_jsonl(tmp_path / "train.jsonl", plain * 3 + tool_rows()[:1])),
                "validation_file": str(write_jsonl(tmp_path / "validation.jsonl", plain)),
                "test_size": 0,
            },
            "train": {"max_seq_len": 512},
        }
    )
    task = SFT(cfg)
    task.load_data()
    assert task.format.name == "chatglm3" and task.format.renders_tools
    assert task.size("validation") == 1, "the split without tools is encoded in the same format"
    assert run_config(cfg).data.template == "chatglm3", "config.yaml names the format the tools chose"

    without_tools = config_mod.from_dict(
        {
            "task": "sft",
            "model": {"name_or_path": str(tmp_path)},
            "data": {"train_file": str(tmp_path / "validation.jsonl"), "validation_size": 0, "test_size": 0},
        }
    )
    plain_task = SFT(without_tools)
    plain_task.load_data()
    assert plain_task.format.name == "auto" and without_tools.data.template == "auto", "nothing changes"
