"""Prompt classification and peft soft prompts end to end: zero-/few-shot runs without training, fine-tuning
through the prompt, prompt_tuning / p_tuning with a head, a prompt and sft; each run reloads and reproduces."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from glmtune.cli import main
from tests.helpers import sft_config, tiny_config, train

PROMPT = {"template": "这个{text}。真", "verbalizer": {"pos": "好", "neg": ["差", "坏"]}}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_predict_reproduces(run, capsys) -> None:
    """`glmtune predict RUN` rebuilds the model and gives the test predictions written by training."""
    written = read_jsonl(run / "predictions.jsonl")[0]
    capsys.readouterr()
    main(["predict", str(run), "--text", written["text"]])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for label, p in written["probs"].items():
        assert again["probs"][label] == pytest.approx(p, abs=1e-4)


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("few_shot", [0, 2])
def test_zero_and_few_shot_evaluation_without_training(
    tmp_path, tiny_model_dir, sentiment_file, few_shot, capsys
):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        prompt={**PROMPT, "few_shot": few_shot, "separator": "，"},
        method={"name": "freeze", "trainable_layers": 1},
        train={"max_steps": 0},
    )
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["best_step"] is None
    assert 0 <= metrics["test"]["accuracy"] <= 1 and metrics["test"]["n"] == 16
    prompt = json.loads((run / "prompt.json").read_text())
    assert len(prompt["demonstrations"]) == few_shot and prompt["words"] == [["差", "坏"], ["好"]]
    # Nothing trained: the saved body equals the base model's top layer.
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    body = load_file(str(run / "body.safetensors"))
    assert body and all(v.equal(base[k]) for k, v in body.items())
    assert_predict_reproduces(run, capsys)
    main(["eval", str(run)])
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["accuracy"] == metrics["test"]["accuracy"]


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning", "p_tuning"])
def test_fine_tuning_through_the_prompt(tmp_path, tiny_model_dir, sentiment_file, method, capsys):
    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        prompt=PROMPT,
        method={"name": method, "num_virtual_tokens": 4},
        train={"gradient_checkpointing": method == "lora"},
    )
    run = train(tmp_path, cfg)
    log = read_jsonl(run / "log.jsonl")
    assert [row["step"] for row in log if row.get("split") == "train"] == [1, 2]
    assert not (run / "head.safetensors").exists(), "the LM's own head scores the label words"
    if method == "full":
        body = load_file(str(run / "body.safetensors"))
        base = load_file(str(tiny_model_dir / "model.safetensors"))
        assert "lm_head.weight" in body or "model.embed_tokens.weight" in body
        assert any(not v.equal(base[k]) for k, v in body.items() if k in base)
    else:
        adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert adapter
        if method != "lora":
            config = json.loads((run / "adapter" / "adapter_config.json").read_text())
            assert config["task_type"] == "CAUSAL_LM" and config["num_virtual_tokens"] == 4
    assert_predict_reproduces(run, capsys)


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_soft_prompts_with_the_classification_head(tmp_path, tiny_model_dir, sentiment_file, method, capsys):
    cfg = tiny_config(tiny_model_dir, sentiment_file, method={"name": method, "num_virtual_tokens": 3})
    run = train(tmp_path, cfg)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "FEATURE_EXTRACTION" and config["num_virtual_tokens"] == 3
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any("prompt" in k for k in adapter), list(adapter)
    head = load_file(str(run / "head.safetensors"))
    assert head["weight"].abs().sum() > 0, "the head trains next to the soft prompt"
    assert_predict_reproduces(run, capsys)
    # Virtual tokens are no weights a plain model folder could hold: export refuses in one line.
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run), "--merge", "--out", str(tmp_path / "export")])
    assert exit_info.value.code == 2 and "cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_soft_prompts_for_sft(tmp_path, tiny_model_dir, chat_file, method, capsys):
    cfg = sft_config(
        tiny_model_dir, {"train_file": str(chat_file)}, method={"name": method, "num_virtual_tokens": 4}
    )
    cfg["generate"] = {"max_new_tokens": 4}
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["loss"] > 0 and "rougeL_char" in metrics["test"]
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] in ("PROMPT_TUNING", "P_TUNING")
    capsys.readouterr()
    main(["eval", str(run)])  # reload: the same test loss as at the end of training
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-4)


def test_packing_is_refused_with_soft_prompts(tmp_path, tiny_model_dir, chat_file, capsys):
    from tests.helpers import write_config

    cfg = sft_config(
        tiny_model_dir, {"train_file": str(chat_file), "packing": True}, method={"name": "prompt_tuning"}
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(write_config(tmp_path, cfg)), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "data.packing" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("reset_accelerate")
def test_resumed_p_tuning_prompt_run_ends_like_an_uninterrupted_one(tmp_path, tiny_model_dir, sentiment_file):
    """The checkpoint holds P-tuning's encoder (the adapter folder only its output): resume continues from it."""
    import shutil

    from glmtune.train import reset_process_state

    cfg = tiny_config(
        tiny_model_dir,
        sentiment_file,
        prompt=PROMPT,
        method={"name": "p_tuning", "num_virtual_tokens": 4},
        train={"max_steps": 4, "save_steps": 2, "eval_steps": 2},
    )
    straight = train(tmp_path, cfg)
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step-0000004")
    for name in ("metrics.json", "predictions.jsonl"):  # the adapter stays: the best so far may be step 2's
        (killed / name).unlink()
    reset_process_state()
    main(["train", "--resume", str(killed)])
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, killed))
    assert a == b
    assert (straight / "predictions.jsonl").read_text() == (killed / "predictions.jsonl").read_text()
    # Step 4's validation used the resumed run's own weights (whichever step was best).
    last = [
        {k: v for k, v in row.items() if k != "time"}
        for run in (straight, killed)
        for row in read_jsonl(run / "log.jsonl")
        if row.get("split") == "validation" and row["step"] == 4
    ]
    assert len(last) == 2 and last[0] == last[1]
