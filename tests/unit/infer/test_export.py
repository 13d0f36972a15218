"""glmtune export: merged folders load in plain transformers (a subprocess without glmtune) with the run's logits;
int8 folders reload exactly and report speed/quality; every bad request is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glmtune.cli import main
from tests.helpers import ENV, glmtune_chat, sft_config, tiny_config, train

IDS = [[2, 5, 9, 14, 7, 3, 11, 20]]  # fixed token ids inside the tiny vocabulary

# Runs in a fresh interpreter that must never import glmtune: what a user without glmtune gets.
PLAIN_LM = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
folder, ids = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(folder)
logits = model(input_ids=torch.tensor(ids)).logits
messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "这个好"}]
text = tokenizer.chat_template and tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
eos = GenerationConfig.from_pretrained(folder).eos_token_id
assert not any(m.startswith("glmtune") for m in sys.modules), "glmtune was imported"
print(json.dumps({"class": type(model).__name__, "logits": logits.tolist(), "text": text, "eos": eos}))
"""

PLAIN_CLASSIFIER = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
body, tokenizer = AutoModel.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)
head = load_file(folder + "/head.safetensors")
hidden = body(**tokenizer(text, return_tensors="pt")).last_hidden_state  # [1, seq, hidden]
probs = (hidden[:, -1].float() @ head["weight"].T + head["bias"]).softmax(-1)
assert not any(m.startswith("glmtune") for m in sys.modules), "glmtune was imported"
print(json.dumps(probs[0].tolist()))
"""


def plain_python(script: str, *args: str) -> dict | list:
    env = {**ENV, "PYTHONPATH": ""}  # the installed transformers only; no repo on the path
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120, cwd="/"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_logits(run: Path) -> torch.Tensor:
    """Base model + the run's weights, as glmtune loads the run folder (the reference)."""
    from glmtune.infer import lm

    loaded = lm.load_run(run)
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor(IDS)).logits  # [1, seq, vocab]


def train_classifier(tmp_path: Path, cfg: dict) -> Path:
    """A 2-step classification run through the CLI (``cfg`` from ``tiny_config``)."""
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    main(["train", str(cfg_path), "--output", str(tmp_path / "run")])
    return tmp_path / "run"


# --------------------------------------------------------------------------- merge


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_merged_sft_loads_in_plain_transformers(tmp_path, tiny_model_dir, chat_file, method):
    from glmtune.infer import lm

    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(chat_file)}, method={"name": method}))
    out = tmp_path / "merged"
    main(["export", str(run), "--out", str(out), "--merge"])
    assert (out / "model.safetensors").is_file() and (out / "export.json").is_file()
    assert not (out / "glmtune.json").exists(), "an export is not a run folder"
    plain = plain_python(PLAIN_LM, str(out), json.dumps(IDS))
    assert plain["class"] == "LlamaForCausalLM"
    reference = run_logits(run)
    base = plain_python(PLAIN_LM, str(tiny_model_dir), json.dumps(IDS))
    assert not torch.allclose(torch.tensor(base["logits"]), reference, atol=1e-3), (
        "training changed the logits"
    )
    torch.testing.assert_close(torch.tensor(plain["logits"]), reference, atol=1e-4, rtol=0)
    # The run's template (plain) as a Jinja chat template, and its stop ids in generation_config.json.
    loaded = lm.load_run(run)
    from glmtune.data.conversation import Message

    messages = [Message("system", "sys"), Message("user", "这个好")]
    assert plain["text"] == loaded.format.render(messages, None, True)
    assert plain["eos"] == loaded.format.stop_ids() or [plain["eos"]] == loaded.format.stop_ids()
    notes = json.loads((out / "export.json").read_text())
    assert notes["weights"] == "merged" and notes["method"] == method and "no glmtune" in notes["loads_with"]
    assert "AutoModelForCausalLM" in (out / "README.md").read_text()


@pytest.mark.usefixtures("reset_accelerate")
def test_merged_classifier_body_and_head(tmp_path, tiny_model_dir, sentiment_file, capsys):

    from glmtune.infer import classifier, export

    run = train_classifier(tmp_path, tiny_config(tiny_model_dir, sentiment_file))
    out = tmp_path / "merged"
    main(["export", str(run), "--out", str(out), "--merge"])
    assert {"head.safetensors", "labels.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    texts = ["这个东西非常好", "物流真慢，差"]
    reference = classifier.predict_texts(classifier.load_run(run), texts)  # [2, labels]
    again = classifier.predict_texts(export.load_export(out), texts)
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=0)
    plain = plain_python(PLAIN_CLASSIFIER, str(out), texts[0])  # README's snippet, pooling "last"
    torch.testing.assert_close(torch.tensor(plain), reference[0], atol=1e-5, rtol=0)
    capsys.readouterr()
    main(["predict", str(out), "--text", texts[1]])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        row["probs"]
        == classifier.prediction(reference[1], json.loads((out / "labels.json").read_text()))["probs"]
    )


# --------------------------------------------------------------------------- int8


@pytest.mark.usefixtures("reset_accelerate")
def test_int8_sft_export_reloads_and_reports(tmp_path, tiny_model_dir, chat_file, capsys):
    from glmtune.infer import export, lm
    from glmtune.models import int8

    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(chat_file)}))
    out = tmp_path / "int8"
    main(["export", str(run), "--out", str(out), "--quantize", "int8"])
    assert (out / "model.int8.safetensors").is_file() and not (out / "model.safetensors").exists()
    report = json.loads((out / "quantization.json").read_text())
    assert report["examples"] == 6 and report["speedup"] > 0
    for key in ("loss", "rougeL_char", "bleu4", "seconds", "forward_seconds"):
        assert key in report["fp32"] and key in report["int8"]
    assert abs(report["delta"]["loss"]) < 0.05, "int8 barely moves the loss"
    assert report["weights_mb"]["int8"] < report["weights_mb"]["fp32"]
    # The folder reloads to exactly the model that was measured: merged, then quantized in memory.
    loaded = lm.load_run(run)
    merged = export.merge(loaded)
    with torch.no_grad():
        fp32 = merged(input_ids=torch.tensor(IDS)).logits
        expected = int8.quantize(merged)(input_ids=torch.tensor(IDS)).logits
        got = export.load_export(out).model(input_ids=torch.tensor(IDS)).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got - fp32).abs().max() < 0.05 and not torch.equal(got, fp32)
    capsys.readouterr()
    main(["predict", str(out), "--text", "这个好"])
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output"]
    chat = glmtune_chat(str(out), lines="这个好\n/exit\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout == reply + "\n", "glmtune chat loads the int8 export like predict does"


@pytest.mark.usefixtures("reset_accelerate")
def test_int8_classifier_export_reports_accuracy(tmp_path, tiny_model_dir, sentiment_file, capsys):

    from glmtune.infer import classifier, export

    cfg = tiny_config(tiny_model_dir, sentiment_file, method={"name": "freeze", "trainable_layers": 1})
    run = train_classifier(tmp_path, cfg)
    out = tmp_path / "int8"
    main(
        [
            "export",
            str(run),
            "--out",
            str(out),
            "--quantize",
            "int8",
            "--merge",
            "--data",
            str(sentiment_file),
        ]
    )
    report = json.loads((out / "quantization.json").read_text())
    assert report["examples"] == 96 and 0 <= report["agreement"] <= 1, (
        "measured on --data, not the test split"
    )
    assert report["delta"]["accuracy"] == pytest.approx(
        report["int8"]["accuracy"] - report["fp32"]["accuracy"]
    )
    texts = ["这个东西非常好", "物流真慢，差"]
    reference = classifier.predict_texts(classifier.load_run(run), texts)
    again = classifier.predict_texts(export.load_export(out), texts)
    assert (again - reference).abs().max() < 0.02
    assert "int8" in (out / "README.md").read_text()


# --------------------------------------------------------------------------- bad input


def export_fails(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder with its marker and config but no trained weights (training never finished)."""
    from glmtune.core.runs import RunDir

    run = RunDir(tmp_path / "run")
    run.create()
    run.write_marker({"task": "sft"})
    run.config.write_text("task: sft\n")
    return run.path


def test_run_without_weights(tmp_path, fake_run, capsys):
    err = export_fails(str(fake_run), "--out", str(tmp_path / "out"), "--merge", capsys=capsys)
    assert str(fake_run) in err and "no trained weights" in err
    assert not (tmp_path / "out").exists()


def test_run_of_another_layout(tmp_path, fake_run, capsys):
    (fake_run / "glmtune.json").write_text(json.dumps({"format": 0, "glmtune": "0.0.1"}))
    err = export_fails(str(fake_run), "--out", str(tmp_path / "out"), "--merge", capsys=capsys)
    assert "format 0" in err and "re-train" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("mode", "words"), [("int3", "unknown quantize mode"), ("nf4", "not an export format")]
)
def test_quantize_modes_not_available(tmp_path, fake_run, mode, words, capsys):
    err = export_fails(str(fake_run), "--out", str(tmp_path / "out"), "--quantize", mode, capsys=capsys)
    assert words in err and "--quantize" in err and "int8" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_never_touched(tmp_path, fake_run, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = export_fails(str(fake_run), "--out", str(out), "--merge", capsys=capsys)
    assert str(out) in err and "never overwrites" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_nothing_requested(tmp_path, fake_run, capsys):
    err = export_fails(str(fake_run), "--out", str(tmp_path / "out"), capsys=capsys)
    assert "--merge" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- ChatGLM3 (glmtune's native class)


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("method", [{"name": "lora", "lora_r": 4, "lora_alpha": 8}, {"name": "ptuning", "pre_seq_len": 4}],
                         ids=["lora", "ptuning"])  # fmt: skip
def test_chatglm3_export_loads_with_glmtune(tmp_path, chatglm3_dir, method):
    """Merged LoRA, and a P-tuning prefix exported inside the model (config.json pre_seq_len): the same logits."""
    from glmtune.infer import export, lm
    from tests.helpers import tool_rows, write_jsonl

    data = {"train_file": str(write_jsonl(tmp_path / "tools.jsonl", tool_rows())), "template": "chatglm3",
            "validation_size": 2, "test_size": 2}  # fmt: skip
    cfg = sft_config(chatglm3_dir, data, method=method, train={"batch_size": 4, "max_seq_len": 256})
    run = train(tmp_path, cfg)
    out = tmp_path / "merged"
    main(["export", str(run), "--out", str(out), "--merge"])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "chatglm"
    assert config.get("pre_seq_len") == (4 if method["name"] == "ptuning" else None)
    notes = json.loads((out / "export.json").read_text())
    assert notes["loads_with"].startswith("glmtune's native ChatGLM3")
    assert "import glmtune.models.chatglm3" in (out / "README.md").read_text()
    reference = lm.load_run(run)
    # [gMASK] sop <|user|> ... <|assistant|>
    ids = torch.tensor([[64790, 64792, 64795, 30910, 13, 34211, 64796]])
    exported = export.load_export(out)
    with torch.no_grad():
        want = reference.model(input_ids=ids).logits
        got = exported.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert exported.format.stop_ids() == reference.format.stop_ids()
    # int8 through the native class too (the prefix embedding stays float): close to the fp32 logits.
    main(["export", str(run), "--out", str(tmp_path / "int8"), "--quantize", "int8"])
    with torch.no_grad():
        got8 = export.load_export(tmp_path / "int8").model(input_ids=ids).logits
    assert (got8 - want).abs().max() < 0.05 * want.abs().max()


# --------------------------------------------------------------------------- chat templates as Jinja


def test_builtin_templates_as_jinja_render_the_same():
    """The exported chat_template renders every test conversation exactly like glmtune's own template."""
    from glmtune.core.errors import UserError
    from glmtune.data.chat_jinja import to_jinja
    from glmtune.data.templates import builtin_templates, resolve_template
    from tests.helpers import MULTI, SINGLE, TOOLS, bpe_tokenizer, hf_messages

    for name, template in builtin_templates().items():
        tokenizer = bpe_tokenizer(name, None)
        fmt, jinja = resolve_template(tokenizer, name), to_jinja(template)
        for conv in (SINGLE, MULTI, TOOLS):
            for generation_prompt in (False, True):
                messages = conv.messages[:-1] if generation_prompt else conv.messages
                render = dict(tools=conv.tools, add_generation_prompt=generation_prompt, tokenize=False)
                try:
                    want = fmt.render(messages, conv.tools, generation_prompt)
                except UserError:  # no tool format: the Jinja refuses too
                    with pytest.raises(Exception, match="no format for tool"):
                        tokenizer.apply_chat_template(hf_messages(conv), chat_template=jinja, **render)
                    continue
                trimmed = type(conv)(messages, conv.tools)
                got = tokenizer.apply_chat_template(hf_messages(trimmed), chat_template=jinja, **render)
                assert got == want, (name, generation_prompt)


@pytest.mark.usefixtures("reset_accelerate")
def test_chatglm3_ptuning_classifier_export(tmp_path, chatglm3_dir, sentiment_file):
    """A classification P-tuning run: the body keeps its prefix encoder (pre_seq_len), the head rides along."""

    from glmtune.infer import classifier, export

    cfg = tiny_config(chatglm3_dir, sentiment_file, method={"name": "ptuning", "pre_seq_len": 4})
    run = train_classifier(tmp_path, cfg)
    out = tmp_path / "merged"
    main(["export", str(run), "--out", str(out), "--merge"])
    assert json.loads((out / "config.json").read_text())["pre_seq_len"] == 4
    texts = ["这个东西非常好", "物流真慢，差"]
    reference = classifier.predict_texts(classifier.load_run(run), texts)
    again = classifier.predict_texts(export.load_export(out), texts)
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=0)
