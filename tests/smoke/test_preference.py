"""task: preference end to end on a tiny random Llama: 2-step CLI runs for every loss, the run folder, the reference
cache, ``glmtune eval RUN --data``, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from glmtune.cli import main
from tests.helpers import assert_nothing_written, run_cli, sft_config, train, write_jsonl


def _pairs(n: int = 30) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": "这个" + "好坏"[i % 2] + "吗" * (i % 3)}],
            "chosen": "很好。",  # one preferred reply: two steps learn it
            "rejected": "很差。",
        }
        for i in range(n)
    ]


def _config(tiny_model_dir, data_file, loss: str, method: str = "lora", **preference) -> dict:
    cfg = sft_config(
        tiny_model_dir, {"train_file": str(data_file)}, method={"name": method, "trainable_layers": 1}
    )
    cfg["task"] = "preference"
    cfg["preference"] = {"loss": loss, **preference}
    cfg["train"]["metric"] = "reward_accuracy"
    del cfg["generate"]
    return cfg


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    "loss, method",
    [
        ("dpo", "lora"),  # the reference: the adapter switched off
        ("kto", "full"),  # the reference precomputed and cached (KL rows too)
        ("simpo", "freeze"),  # no reference
    ],
)
def test_preference_run_writes_a_causal_lm_run_folder(tmp_path, tiny_model_dir, loss, method, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    run = train(tmp_path, _config(tiny_model_dir, data, loss, method))
    out = capsys.readouterr().out
    assert "before" in out and "reward_accuracy" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("before", "after", "test"):
        assert {"loss", "reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"} <= set(
            metrics[split]
        )
    assert metrics["after"]["loss"] < metrics["before"]["loss"], "two steps at lr 1e-2 lower the loss"
    assert (run / "adapter").is_dir() if method == "lora" else (run / "body.safetensors").is_file()
    cached = (run / "reference_logps.safetensors").is_file()
    assert cached == (method == "full"), (
        "full/freeze with a reference loss: the reference log-probs are cached"
    )
    if cached:
        reference = load_file(str(run / "reference_logps.safetensors"))
        assert reference["validation"].shape == (
            6 * (2 if loss == "kto" else 1),
            2,
        )  # kto: each pair split in two
    # eval on the test split reproduces the final test metrics; on a file it writes eval/NAME/metrics.json
    main(["eval", str(run)])
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4, abs=1e-6)
    assert again["reward_accuracy"] == pytest.approx(metrics["test"]["reward_accuracy"])
    main(["eval", str(run), "--data", str(data)])
    assert json.loads((run / "eval" / "pairs" / "metrics.json").read_text())["n"] == 30 * (
        2 if loss == "kto" else 1
    )
    if method == "lora":  # int8 export: scored as an LM on each test prompt with its chosen response
        main(["export", str(run), "--out", str(tmp_path / "int8"), "--quantize", "int8"])
        report = json.loads((tmp_path / "int8" / "quantization.json").read_text())
        assert report["examples"] == 6 and "loss" in report["fp32"] and "loss" in report["int8"]


@pytest.mark.usefixtures("reset_accelerate")
def test_a_resumed_run_reads_the_reference_cache_back(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from glmtune.train import reset_process_state
    from glmtune.train.tasks.preference import Preference

    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    run = train(tmp_path, _config(tiny_model_dir, data, "dpo", "full"))
    cached = (run / "reference_logps.safetensors").read_bytes()
    for name in ("metrics.json", "predictions.jsonl"):  # as a kill before the end leaves it
        (run / name).unlink(missing_ok=True)

    def recompute(*_args, **_kwargs):
        raise AssertionError("the cached reference log-probs are read back, not computed again")

    monkeypatch.setattr(Preference, "_precompute", recompute)
    reset_process_state()
    capsys.readouterr()
    main(["train", "--resume", str(run)])
    assert "reference precomputed (read from reference_logps.safetensors)" in capsys.readouterr().out
    assert (run / "reference_logps.safetensors").read_bytes() == cached
    assert (run / "metrics.json").is_file()


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize(
    "rows, overrides, words",
    [
        (
            [{"prompt": "这个好", "chosen": "很好。", "rejected": "很好。"}],
            {},
            "pairs.jsonl:31: field 'rejected'",
        ),
        ([{"prompt": "这个好", "chosen": "", "rejected": "很好。"}], {}, "field 'chosen'"),
        (
            [{"prompt": "这个好" * 40, "chosen": "很好。", "rejected": "很差。"}],
            {},
            "no room for the response",
        ),
        ([], {"loss": "dpo"}, None),
        ([], {"loss": "orpo", "reference": "precomputed"}, "field 'preference.reference'"),
    ],
)
def test_bad_preference_input_is_one_line_and_writes_nothing(
    tmp_path, tiny_model_dir, rows, overrides, words, capsys
):
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs() + rows)
    if words is None:  # KTO data without labels (completions, no "label")
        data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "这个好", "completion": "很好。"}])
        words = "field 'label'"
    cfg = _config(tiny_model_dir, data, **{"loss": "dpo", **overrides})
    err = run_cli(tmp_path, cfg, capsys=capsys)
    assert words in err, err
    assert_nothing_written(tmp_path)


@pytest.mark.usefixtures("reset_accelerate")
def test_preference_from_an_sft_lora_run_then_predict_and_export(tmp_path, tiny_model_dir, chat_file, capsys):
    """model.name_or_path: a finished SFT LoRA run: its adapter is merged into the base, the preference run trains
    a new adapter on top, and the reference is the merged SFT model (the new adapter off). predict and export
    --merge load the preference run through the same chain."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmtune.infer import lm

    (tmp_path / "sft").mkdir()
    sft = train(tmp_path / "sft", sft_config(tiny_model_dir, {"train_file": str(chat_file)}))
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    cfg = _config(sft, data, "dpo")
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    # before training, the policy is the merged SFT model and so is the reference: every reward is zero
    assert metrics["before"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    sft_model = lm.load_run(sft).model
    loaded = lm.load_run(run)  # base + SFT adapter (merged) + the preference adapter
    ids = torch.tensor([loaded.tokenizer("这个好")["input_ids"]])
    with torch.no_grad(), loaded.model.backbone.disable_adapter():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits, sft_model(input_ids=ids).logits, atol=1e-5, rtol=0
        )
    capsys.readouterr()
    main(["predict", str(run), "--text", "这个好"])
    assert "output" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "merged"
    main(["export", str(run), "--out", str(out), "--merge"])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert AutoTokenizer.from_pretrained(out) is not None
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, loaded.model(input_ids=ids).logits, atol=1e-5, rtol=0
        )
