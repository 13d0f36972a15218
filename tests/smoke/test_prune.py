"""glmtune prune through the CLI: a 2-step tiny run → prune → the pruned folder works with predict and eval (and
reproduces the in-memory pruned model), export takes it, and --recover trains it distilling from the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glmtune.cli import main
from glmtune.core import config as config_mod
from tests.helpers import sft_config, tiny_config, train
from tests.tiny import save_model, sentiment_tokenizer, tiny_llama_config


def four_layer_llama(path: Path) -> Path:
    tokenizer = sentiment_tokenizer()
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        num_hidden_layers=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model(path, config, tokenizer)


@pytest.mark.usefixtures("reset_accelerate")
def test_prune_classification_run_then_predict_eval_export(tmp_path, sentiment_file, capsys):
    from glmtune.infer import classifier
    from glmtune.infer import prune as prune_mod

    model_dir = four_layer_llama(tmp_path / "llama4")
    run = train(tmp_path, tiny_config(model_dir, sentiment_file))  # LoRA: merged before the cut
    out = tmp_path / "pruned"
    capsys.readouterr()
    main(
        [
            "prune",
            str(run),
            "--out",
            str(out),
            "--layers",
            "2",
            "--mlp-sparsity",
            "0.25",
            "--calibration",
            "8",
        ]
    )
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == str(out) and "layers 4 → 2" in printed
    report = json.loads((out / "prune.json").read_text())
    assert len(report["layers"]["block_influence"]) == 4 and len(report["layers"]["removed"]) == 2
    assert report["mlp"] == {**report["mlp"], "intermediate_before": 64, "intermediate_after": 48}
    assert report["parameters_after"] < report["parameters_before"]
    assert json.loads((out / "model" / "config.json").read_text())["num_hidden_layers"] == 2

    # The folder reloads to exactly the model the cut made in memory.
    reference = prune_mod.load_merged(run)
    prune_mod.apply(reference, prune_mod.Request(layers=2, mlp_sparsity=0.25, calibration=8))
    texts = ["这个很好", "太差了"]
    expected = classifier.predict_texts(reference, texts)
    reloaded = classifier.load_run(out)
    assert torch.allclose(classifier.predict_texts(reloaded, texts), expected, atol=1e-6)

    main(["predict", str(out), "--text", texts[0]])
    probs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probs"]
    assert list(probs.values()) == pytest.approx(expected[0].tolist(), abs=1e-5)
    main(["eval", str(out)])
    assert "accuracy" in capsys.readouterr().out
    main(["export", str(out), "--out", str(tmp_path / "export"), "--merge"])
    assert (tmp_path / "export" / "export.json").is_file()


@pytest.mark.usefixtures("reset_accelerate")
def test_prune_sft_run_with_recovery(tmp_path, chat_file, capsys):
    model_dir = four_layer_llama(tmp_path / "llama4")
    run = train(tmp_path, sft_config(model_dir, {"train_file": str(chat_file)}, method={"name": "full"}))
    out = tmp_path / "pruned"
    main(
        ["prune", str(run), "--out", str(out), "--sparsity", "0.5", "--unstructured", "0.5", "--recover", "2"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert str(out) in lines and lines[-1] == str(out / "recovered")
    report = json.loads((out / "prune.json").read_text())
    assert report["layers_after"] == 2 and report["unstructured"]["fraction_of_layer_weights"] == 0.5
    cfg = config_mod.load(out / "recovered" / "config.yaml")
    assert cfg.method.distill.teacher == str(run.absolute()) and cfg.train.max_steps == 2
    assert cfg.model.name_or_path == str((out / "model").absolute())
    for folder in (out, out / "recovered"):
        main(["predict", str(folder), "--text", "这个好"])
        print(capsys.readouterr().out)
