"""QLoRA: bitsandbytes 4-bit/8-bit base weights + LoRA, on bitsandbytes' CPU backend with a tiny random Llama.

What trains (adapters and head only, over Linear4bit/Linear8bitLt layers), the run folder (adapter only), resume,
predict/eval loading the base quantized as trained, ``export --merge`` into the *unquantized* base (logits equal
fp32 base + adapter), and bad combinations as one-line errors with exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from glmtune import methods
from glmtune.cli import main
from glmtune.core import config as config_mod
from tests.helpers import assert_predict_reproduces, run_cli, sft_config, tiny_config
from tests.tiny import save_tiny_llama

bnb = pytest.importorskip("bitsandbytes")
LINEAR = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama at width 64: one whole 64-feature block of bitsandbytes' packed CPU 4-bit layout."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-64"), hidden_size=64, intermediate_size=128)


def train(tmp_path: Path, cfg: dict, name: str = "run") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = tmp_path / name
    main(["train", str(path), "--output", str(out)])
    return out


def quantized(model: torch.nn.Module, bits: str) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, LINEAR[bits])]


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_only_adapters_and_head_train_over_quantized_linears(wide_model_dir, sentiment_file, bits):
    from glmtune.models import load_classifier

    cfg = config_mod.from_dict(tiny_config(wide_model_dir, sentiment_file, model={"quantization": bits}))
    classifier, tokenizer = load_classifier(cfg.model, 2)
    methods.apply(classifier, cfg.method)
    assert len(quantized(classifier, bits)) == 2 * 7, "q/k/v/o + gate/up/down of both layers"
    trainable = [n for n, p in classifier.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= set(trainable)
    assert classifier.head.weight.dtype == torch.float32
    batch = tokenizer(["这个很好", "真差"], return_tensors="pt", padding=True)
    classifier.head.weight.data.normal_()  # the zero-init head would pass no gradient back to the body
    classifier.train()
    loss = classifier(**batch).logsumexp(-1).mean()
    loss.backward()
    grads = [n for n, p in classifier.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("lora_B" in n for n in grads) and "head.weight" in grads  # B starts at 0: A gets none yet


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_sft_run_holds_only_the_adapter_and_reloads_quantized(
    tmp_path, wide_model_dir, chat_file, bits
):
    from glmtune.infer import lm

    cfg = sft_config(wide_model_dir, {"train_file": str(chat_file)}, model={"quantization": bits})
    run = train(tmp_path, cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["after"]["loss"] < metrics["before"]["loss"], "two steps at lr 1e-2 lower the loss"
    assert sorted(p.name for p in (run / "adapter").iterdir()) == ["README.md", "adapter_config.json",
                                                                     "adapter_model.safetensors"]  # fmt: skip
    assert not (run / "body.safetensors").exists() and not (run / "head.safetensors").exists()
    loaded = lm.load_run(run)
    assert loaded.cfg.model.quantization == bits and quantized(loaded.model, bits)
    main(["eval", str(run)])  # the base quantized as trained: the same test loss
    again = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)


@pytest.mark.usefixtures("reset_accelerate")
def test_qlora_classification_resumes_and_predicts(tmp_path, wide_model_dir, sentiment_file, capsys):
    train_cfg = {"max_steps": 3, "eval_steps": 1, "save_total_limit": 3}
    cfg = tiny_config(wide_model_dir, sentiment_file, model={"quantization": "4bit"}, train=train_cfg)
    straight = train(tmp_path, cfg, "straight")
    a = json.loads((straight / "metrics.json").read_text())
    assert a["steps"] == 3 and all(a[s]["loss"] == a[s]["loss"] for s in ("validation", "test")), "finite"
    # A run that died after its step-2 checkpoint: resuming gives the same result.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-0000003")
    (crashed / "metrics.json").unlink()
    main(["train", "--resume", str(crashed)])
    b = json.loads((crashed / "metrics.json").read_text())
    assert b["steps"] == 3 and b["best_step"] == a["best_step"]
    for split in ("validation", "test"):
        assert b[split]["loss"] == pytest.approx(a[split]["loss"], abs=1e-6)
    written = [json.loads(line) for line in (straight / "predictions.jsonl").read_text().splitlines()]
    capsys.readouterr()
    main(["predict", str(straight), "--text", written[0]["text"]])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for label, p in written[0]["probs"].items():
        assert again["probs"][label] == pytest.approx(p, abs=1e-4)


@pytest.mark.usefixtures("reset_accelerate")
def test_export_merge_folds_the_adapter_into_the_unquantized_base(tmp_path, wide_model_dir, chat_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = sft_config(wide_model_dir, {"train_file": str(chat_file)}, model={"quantization": "4bit"})
    run = train(tmp_path, cfg)
    out = tmp_path / "merged"
    main(["export", str(run), "--merge", "--out", str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not quantized(merged, "4bit") and not hasattr(merged.config, "quantization_config")
    notes = json.loads((out / "export.json").read_text())
    assert notes["config"]["model"]["quantization"] == "none", "the merged folder is full precision"
    base = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = torch.tensor([[2, 5, 9, 14, 7, 3, 11, 20]])
    with torch.no_grad():
        expected, got = reference(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"method": {"name": "full"}}, "model.quantization"),
        ({"method": {"name": "freeze"}}, "cannot be trained with method freeze"),
        ({"model": {"quantization": "3bit"}}, "model.quantization"),
        ({"model": {"quant_type": "int4"}}, "model.quant_type"),
    ],
)
def test_bad_quantization_configs_are_one_line(
    tmp_path, tiny_model_dir, sentiment_file, sections, needle, capsys
):
    model = {"quantization": "4bit", **sections.get("model", {})}
    cfg = tiny_config(tiny_model_dir, sentiment_file, **{**sections, "model": model})
    err = run_cli(tmp_path, cfg, capsys=capsys)
    assert needle in err
    assert not (tmp_path / "run").exists()


def test_a_narrow_model_runs_4bit_inference_on_cpu(tiny_model_dir):
    """Width 32 is less than one 64-feature block of bitsandbytes' packed CPU layout: kept unpacked, it runs."""
    from glmtune.models.load import load_causal_lm

    cfg = config_mod.from_dict({"model": {"name_or_path": str(tiny_model_dir), "quantization": "4bit"}})
    model = load_causal_lm(cfg.model).eval()
    assert quantized(model, "4bit")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 5, 9, 14]])).logits
    assert torch.isfinite(logits).all()


def test_qlora_gradients_match_fp32_on_the_dequantized_weights(wide_model_dir):
    """An independent reference: the same LoRA over an fp32 model holding the 4-bit weights dequantized gives the
    same loss and LoRA gradients (bitsandbytes' CPU kernels vs plain torch)."""
    from bitsandbytes.functional import dequantize_4bit
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from glmtune.models.load import load_causal_lm
    from glmtune.models.quant import prepare_for_training

    cfg = config_mod.from_dict({"model": {"name_or_path": str(wide_model_dir), "quantization": "4bit"}})
    q_model = prepare_for_training(load_causal_lm(cfg.model))
    reference = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name in quantized(q_model, "4bit"):
            layer = q_model.get_submodule(name)
            weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()  # [out, in]
            reference.get_submodule(name).weight.copy_(weight)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", exclude_modules=["lm_head"]
    )
    models = []
    for model in (q_model, reference):
        torch.manual_seed(0)
        peft_model = get_peft_model(model, lora)
        with torch.no_grad():  # B is zero-initialised: make it matter
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.linspace(-0.1, 0.1, param.numel()).reshape(param.shape))
        peft_model.eval()
        # An evaluation first, as training does: it must not change how training computes.
        with torch.no_grad():
            peft_model(input_ids=torch.tensor([[2, 5, 9]]))
        models.append(peft_model.train())
    ids = torch.tensor([[2, 5, 9, 14, 7, 3, 11, 20], [4, 6, 8, 10, 12, 13, 15, 16]])
    losses = [m(input_ids=ids, labels=ids).loss for m in models]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-4)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 7 * 2
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.usefixtures("reset_accelerate")
def test_chatglm3_native_model_trains_4bit_with_gradient_checkpointing(
    tmp_path, chatglm3_dir, sentiment_file, capsys
):
    """glmtune's own ChatGLM3 classes quantize through from_pretrained like any transformers model; gradient
    checkpointing (the inputs made to require grad) still reaches the adapters."""
    from glmtune.infer import classifier

    method = {"name": "lora", "lora_r": 4, "lora_alpha": 8}
    train_cfg = {"gradient_checkpointing": True}
    cfg = tiny_config(
        chatglm3_dir, sentiment_file, model={"quantization": "4bit"}, method=method, train=train_cfg
    )
    run = train(tmp_path, cfg)
    loaded = classifier.load_run(run)
    names = quantized(loaded.classifier, "4bit")
    assert any(n.endswith("query_key_value.base_layer") for n in names)
    assert any(n.endswith("dense_4h_to_h.base_layer") for n in names)
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "every adapter got gradient"
    # The reloaded run predicts one text alone and in a batch identically, but 1.5e-4 away from the trained
    # model in the training process (bitsandbytes' CPU 4-bit path; seen after LoRA dropout changed the trained
    # weights, so it depends on them): compared at 5e-4 here, at 1e-4 everywhere else.
    assert_predict_reproduces(run, capsys, atol=5e-4)


@pytest.mark.usefixtures("reset_accelerate")
def test_serve_loads_qlora_runs_quantized(tmp_path, wide_model_dir, chat_file, sentiment_file):
    """glmtune serve over a 4-bit sft run and a 4-bit classification run: the real server, the openai client."""
    import httpx

    from glmtune.infer import classifier
    from glmtune.infer.serve.app import create_app
    from glmtune.infer.serve.registry import load_models
    from tests.helpers import client, running

    sft = train(
        tmp_path, sft_config(wide_model_dir, {"train_file": str(chat_file)}, model={"quantization": "4bit"})
    )
    cls = train(tmp_path, tiny_config(wide_model_dir, sentiment_file, model={"quantization": "4bit"}), "cls")
    served = load_models([str(sft), str(cls)])
    assert quantized(served["run"].lm.model, "4bit") and quantized(
        served["cls"].classifier.classifier, "4bit"
    )
    texts = ["这个东西质量很好", "物流太慢，失望"]
    expected = classifier.predict_texts(classifier.load_run(cls), texts)  # [2, labels]
    with running(create_app(served)) as url:
        reply = client(url).chat.completions.create(
            model="run", messages=[{"role": "user", "content": "这个好"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 4
        answer = httpx.post(url + "/v1/classify", json={"model": "cls", "input": texts}).json()
    labels = json.loads((cls / "labels.json").read_text())
    for row, probs in zip(answer["data"], expected):
        for label, p in zip(labels, probs):
            assert row["probs"][label] == pytest.approx(float(p), abs=1e-5)
