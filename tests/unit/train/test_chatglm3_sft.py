"""ChatGLM3 tool calling end to end: a tiny random ChatGLM3 (real tokenizer) fine-tuned 2 steps with task: sft on
messages with tools, tool calls and observations (LoRA and P-tuning v2); ``glmtune predict`` replies go through
``parse_reply``; generation stops on the chat format's stop ids."""

from __future__ import annotations

import json

import pytest
import yaml

from glmtune.cli import main
from tests.helpers import tool_rows, write_jsonl


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    "method, template",
    [
        ({"name": "lora", "lora_r": 4, "lora_alpha": 8}, "chatglm3"),
        ({"name": "ptuning", "pre_seq_len": 4}, "auto"),
    ],
    ids=["lora-chatglm3", "ptuning-auto"],
)
def test_chatglm3_tool_calling_sft(tmp_path, chatglm3_dir, method, template, capsys):
    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows())
    cfg = {
        "task": "sft",
        "model": {"name_or_path": str(chatglm3_dir)},
        "data": {"train_file": str(data), "template": template, "validation_size": 2, "test_size": 2},
        "method": method,
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "max_seq_len": 256,
                  "mixed_precision": "no", "log_steps": 1},
        "eval": {"batch_size": 2},
        "generate": {"max_new_tokens": 8},
    }  # fmt: skip
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    run = tmp_path / "run"
    main(["train", str(cfg_path), "--output", str(run)])
    out = capsys.readouterr().out
    assert "template chatglm3" in out, "auto detects ChatGLM3's own format"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"validation", "test", "before", "after"} <= set(metrics)
    assert (run / ("adapter" if method["name"] == "lora" else "body.safetensors")).exists()
    main(["eval", str(run)])  # reloaded (prefix or adapter onto the base): the same test loss
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)

    # Generation stops on the chat format's stop ids (</s>, <|user|>, <|observation|>), never printing them.
    from glmtune.data.templates import stop_ids
    from glmtune.infer.lm import load_run
    from glmtune.models.chatglm3.chat_format import stop_ids as chatglm3_stop_ids

    loaded = load_run(run)
    assert (
        loaded.format.stop_ids()
        == chatglm3_stop_ids(loaded.tokenizer)
        == stop_ids(loaded.tokenizer, "chatglm3")
    )

    prompt = tool_rows()[0]
    prompt["messages"] = prompt["messages"][
        :2
    ]  # system + the user's question: the model should call the tool
    observed = tool_rows()[1]
    observed["messages"] = observed["messages"][:4]  # ... after the tool's result: the model should answer
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [prompt, observed])
    main(["predict", str(run), "--input", str(prompts), "--output", str(tmp_path / "out.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["finish_reason"] in ("stop", "length")
        assert set(row["message"]) in ({"content"}, {"name", "parameters"}, {"name", "content"}), row
        for special in ("<|user|>", "<|observation|>", "<|assistant|>", "</s>"):
            assert special not in row["output"]
    assert rows[1]["prompt"] == json.dumps({"temperature": 21}, ensure_ascii=False)
    # What a trained model's tool call looks like once decoded, through the same parser predict uses:
    call = "get_weather\n```python\ntool_call(city='北京')\n```"
    assert loaded.format.parse_reply(call) == {"name": "get_weather", "parameters": {"city": "北京"}}


@pytest.mark.usefixtures("reset_accelerate")
def test_packing_is_refused_for_chatglm3(tmp_path, chatglm3_dir, capsys):
    """Native ChatGLM3 attention ignores packed positions: data.packing is a one-line error, nothing written.
    (Checked on the loaded model, so transformers' loading bar may precede the error line on stderr.)"""
    from tests.helpers import assert_nothing_written

    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows())
    cfg = {
        "task": "sft",
        "model": {"name_or_path": str(chatglm3_dir)},
        "data": {"train_file": str(data), "packing": True, "validation_size": 2, "test_size": 2},
        "train": {"max_steps": 1, "max_seq_len": 256},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(cfg_path), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("glmtune: error: field 'data.packing'") and "chatglm" in err
    assert_nothing_written(tmp_path)
