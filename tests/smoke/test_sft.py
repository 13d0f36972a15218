"""task: sft end to end on a tiny random Llama: 2-step CLI runs, the run folder, what trained, predict, chat."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from glmtune.cli import main
from tests.helpers import ENV, POSITIVE, chat_rows, glmtune_chat, sft_config, train, write_jsonl

GENERATION_KEYS = ("bleu4", "rouge1_char", "rougeL_char", "rougeL_word", "exact_match")


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_sft_run_writes_the_run_folder(tmp_path, tiny_model_dir, chat_file, method, capsys):
    cfg = sft_config(
        tiny_model_dir, {"train_file": str(chat_file)}, method={"name": method, "trainable_layers": 1}
    )
    run = train(tmp_path, cfg)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(run)
    assert "before" in out and "perplexity" in out, "the before/after table is printed"
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "log.jsonl", "loss.png", "glmtune.json"):
        assert (run / name).is_file(), name
    assert not (run / "head.safetensors").exists() and not (run / "labels.json").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test", "before", "after"):
        assert metrics[split]["loss"] > 0 and metrics[split]["perplexity"] > 1, split
        for key in GENERATION_KEYS:
            assert 0 <= metrics[split][key] <= 100, (split, key)
    assert metrics["after"] == metrics["validation"] and metrics["test"]["n"] == 6
    assert metrics["after"]["loss"] < metrics["before"]["loss"], "two steps at lr 1e-2 lower the loss"
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all({"prompt", "reference", "output"} <= set(r) for r in rows)
    assert rows[0]["reference"] in ("很好。", "很差。")

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    if method == "lora":
        adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert adapter and not any("lm_head" in k for k in adapter), "LoRA never wraps the LM head"
        assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    else:
        body = load_file(str(run / "body.safetensors"))
        if method == "full":  # everything, the (tied) LM head included: embeddings trained as the head
            assert set(body) == {k for k in base if k != "lm_head.weight"}
            assert not body["model.embed_tokens.weight"].equal(base["model.embed_tokens.weight"])
        else:
            assert set(body) == {k for k in base if k.startswith("model.layers.1.")} | {"model.norm.weight"}
        assert any(not v.equal(base[k]) for k, v in body.items())
    # The run reloads onto the base model as trained: eval reproduces the test loss written at the end.
    main(["eval", str(run)])
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)


@pytest.mark.usefixtures("reset_accelerate")
def test_untied_lm_head_trains_with_full(tmp_path, chat_file):
    """With its own lm_head (not tied), ``full`` trains it: SFT must never freeze the output layer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.tiny import make_tokenizer

    chars = sorted({c for row in chat_rows() for m in row["messages"] for c in m["content"]})
    tokenizer: PreTrainedTokenizerFast = make_tokenizer(chars)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    model_dir = tmp_path / "untied"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = train(tmp_path, sft_config(model_dir, {"train_file": str(chat_file)}, method={"name": "full"}))
    body = load_file(str(run / "body.safetensors"))
    base = load_file(str(model_dir / "model.safetensors"))
    assert "lm_head.weight" in body and not body["lm_head.weight"].equal(base["lm_head.weight"])


@pytest.mark.usefixtures("reset_accelerate")
def test_weighted_train_files_and_packing(tmp_path, tiny_model_dir, chat_file):
    other = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [{"instruction": "这个" + w, "output": "很好。"} for w in POSITIVE],
    )
    data = {
        "train_files": [{"path": str(chat_file), "weight": 1.0}, {"path": str(other), "weight": 2.0}],
        "packing": True,
    }
    run = train(tmp_path, sft_config(tiny_model_dir, data, train={"metric": "rougeL_char"}))
    summary = json.loads((run / "data_summary.json").read_text())
    total = len(chat_rows()) + len(POSITIVE)
    assert summary["validation"]["total"] == 6 and summary["test"]["total"] == 6
    assert summary["train"]["total"] > total - 12, "the alpaca file counts twice"
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["tokens"] > 0 for r in log if r["split"] == "train")
    validation = [r for r in log if r["split"] == "validation"]
    assert validation and all("rougeL_char" in r and "perplexity" in r for r in validation), (
        "a generation metric picks the best checkpoint: validation generates at every evaluation"
    )


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("generation", [2, "none"])
def test_eval_generation_schedules_generated_metrics(tmp_path, tiny_model_dir, chat_file, generation):
    """Loss at every evaluation; replies at every 2nd evaluation during training and at the end (2), or never."""
    data = {"train_file": str(chat_file)}
    cfg = sft_config(tiny_model_dir, data, train={"eval_steps": 1}, eval={"generation": generation})
    run = train(tmp_path, cfg)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    validation = [r for r in log if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [1, 2] and all(r["loss"] > 0 for r in validation)
    metrics = json.loads((run / "metrics.json").read_text())
    if generation == 2:
        assert [r["rougeL_char"] is not None for r in validation] == [False, True]
        assert all(key in metrics[split] for key in GENERATION_KEYS for split in ("before", "after", "test"))
    else:
        assert all("rougeL_char" not in r for r in validation)
        assert not any(
            key in metrics[split] for key in GENERATION_KEYS for split in ("before", "after", "test")
        )
        assert metrics["after"]["loss"] > 0 and not (run / "predictions.jsonl").exists()


@pytest.mark.usefixtures("reset_accelerate")
def test_predict_and_chat_reuse_the_run(tmp_path, tiny_model_dir, chat_file, capsys):
    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(chat_file)}))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": "这个好"}, {"prompt": "这个差"}, {"prompt": "好"}]
    )
    capsys.readouterr()
    main(["predict", str(run), "--input", str(prompts), "--output", str(tmp_path / "out.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["这个好", "这个差", "好"]
    assert all(isinstance(r["output"], str) and r["finish_reason"] in ("stop", "length") for r in rows)
    main(["predict", str(run), "--text", "这个好"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output"] == rows[0]["output"]

    # The same reply through the REPL: stdin lines in, streamed replies out, scriptable.
    chat = subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "chat", str(run)],
        input="这个好\n/clear\n这个好\n/exit\n",
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout == (rows[0]["output"] + "\n") * 2, "after /clear the same question gets the same reply"


def test_chat_with_a_bare_model_keeps_and_clears_history(tiny_model_dir):
    """Multi-turn: the second answer sees the first exchange; /clear forgets it; a tiny window drops old rounds."""
    args = (str(tiny_model_dir), "--template", "plain", "--max-new-tokens", "5", "--sample", "--seed", "1")
    chat = glmtune_chat(*args, lines="这个好\n这个好\n/clear\n这个好\n/exit\n这个差\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    replies = chat.stdout.split("\n")[:-1]
    assert len(replies) == 3 and replies[0], chat.stdout  # nothing after /exit
    assert replies[2] == replies[0], "after /clear the same question gets the same reply"

    small = glmtune_chat(*args, "--max-context", "16", lines="这个好\n这个差\n这个好很好很好\n")
    assert small.returncode == 0, small.stderr[-2000:]
    assert len(small.stdout.split("\n")[:-1]) == 3, "old rounds are dropped, the chat goes on"

    bad = glmtune_chat(*args, "--temperature", "0", lines="")
    assert bad.returncode == 2 and "generate.temperature" in bad.stderr


def test_data_inspect_shows_the_learned_tokens(tmp_path, tiny_model_dir, chat_file, capsys):
    path = tmp_path / "cfg.yaml"
    cfg = sft_config(tiny_model_dir, {"train_file": str(chat_file)})
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    main(["data", "inspect", str(path), "--n", "2"])
    out = capsys.readouterr().out
    assert out.count("--- ") == 3 and "template plain" in out
    assert "<unk>«很 好 。 <eos>»" in out or "<unk>«很 差 。 <eos>»" in out, (
        "the reply and its EOS are learned, the prompt not"
    )
    main(["data", "inspect", str(path), "data.train_on_prompt=true", "--n", "1"])
    assert "«<bos> 这 个" in capsys.readouterr().out


@pytest.mark.usefixtures("reset_accelerate")
def test_resume_from_a_checkpoint_gives_the_same_run(tmp_path, tiny_model_dir, chat_file):
    """A run stopped after its step-2 checkpoint and resumed ends exactly where an uninterrupted run does."""
    import shutil

    from glmtune.train import reset_process_state

    cfg = sft_config(
        tiny_model_dir,
        {"train_file": str(chat_file)},
        train={"max_steps": 4, "batch_size": 4, "save_steps": 2, "eval_steps": 2},
        method={"lora_dropout": 0.1},  # dropout draws from the RNG: the resumed RNG state must be right
    )
    straight = train(tmp_path, cfg)
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    # What a kill just after the step-2 checkpoint leaves: no later checkpoint, no final files.
    shutil.rmtree(killed / "checkpoints" / "step-0000004")
    for name in ("metrics.json", "predictions.jsonl", "adapter"):
        path = killed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    reset_process_state()
    main(["train", "--resume", str(killed)])
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, killed))
    assert a == b
    assert (straight / "predictions.jsonl").read_text() == (killed / "predictions.jsonl").read_text()
    steps = [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert steps == [1, 2, 3, 4]


def test_two_processes_under_accelerate_launch(tmp_path, tiny_model_dir, chat_file):
    """Loss gathered once per example, generation shared out over processes and gathered in order; a time
    budget is planned on every process and they agree (the smallest plan; here max_steps caps it)."""
    train_cfg = {"max_steps": 2, "batch_size": 4, "time_budget": "1h"}
    cfg = sft_config(tiny_model_dir, {"train_file": str(chat_file)}, train=train_cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    proc = subprocess.run(
        [*launch, "-m", "glmtune.cli", "train", str(path), "--output", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 6 and metrics["before"]["n"] == 6 and metrics["steps"] == 2
    assert (out / "config.yaml").read_text().startswith("# train.time_budget 1h:")
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    test_refs = [r["reference"] for r in rows]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "glmtune.cli", "train", str(path), "--output", str(single)],
        env=ENV,
        capture_output=True,
        check=True,
    )
    assert test_refs == [
        json.loads(x)["reference"] for x in (single / "predictions.jsonl").read_text().splitlines()
    ]


@pytest.mark.usefixtures("reset_accelerate")
def test_eval_reproduces_the_test_metrics(tmp_path, tiny_model_dir, chat_file, capsys):
    """glmtune eval reloads the run (outside accelerate) and scores the test split as training did."""
    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(chat_file)}))
    main(["eval", str(run)])
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    written = json.loads((run / "metrics.json").read_text())["test"]
    assert again["n"] == written["n"] == 6
    assert again["loss"] == pytest.approx(written["loss"], rel=1e-4)
    assert again["bleu4"] == pytest.approx(written["bleu4"]) and again["rougeL_char"] == pytest.approx(
        written["rougeL_char"]
    )
    main(["eval", str(run), "--data", str(chat_file)])
    assert json.loads((run / "eval" / "chat" / "metrics.json").read_text())["n"] == 40
