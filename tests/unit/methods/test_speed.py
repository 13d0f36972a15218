"""models.speed: faster training that computes the same thing (FastDropout, frozen weights cast once, attention)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError
from glmtune.methods.speed import (
    FastDropout,
    FusedLora,
    cast_frozen_linears,
    for_autocast,
    fuse_lora,
    use_fast_dropout,
)
from glmtune.models.load import attention


def test_fast_dropout_drops_at_rate_p_and_rescales_the_rest():
    torch.manual_seed(0)
    dropout = FastDropout(0.05).train()
    x = torch.ones(400, 1000)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    # 400k Bernoulli(0.05) draws: std of the mean ≈ 0.00034, so 5 std either side.
    assert abs(dropped - dropout.p) < 0.0018
    assert abs(dropout.p - 0.05) < 1 / 65536
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - dropout.p)))
    # Independent elements: the mask of the second half is not a copy of the first.
    assert not torch.equal(y[:200] == 0, y[200:] == 0)


def test_fast_dropout_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(1)
    dropout = FastDropout(0.3).train()
    x = torch.randn(8, 7, 5, requires_grad=True)  # an odd element count: the last 64-bit word is cut
    y = dropout(x)
    y.sum().backward()
    expected = (y != 0).float() / (1 - dropout.p)
    assert torch.equal(x.grad, expected)
    assert dropout.eval()(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_fast_dropout_is_seeded():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a = FastDropout(0.1).train()(x)
    torch.manual_seed(3)
    b = FastDropout(0.1).train()(x)
    assert torch.equal(a, b)


def _tiny_lora(tiny_model_dir, dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(model, config)
    for name, p in model.named_parameters():  # B is zero at init: give the adapters something to do
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    return model


def test_use_fast_dropout_replaces_every_lora_dropout(tiny_model_dir):
    model = _tiny_lora(tiny_model_dir, dropout=0.1)
    n = use_fast_dropout(model)
    assert n == 14  # 2 layers × q, k, v, o, gate, up, down
    kinds = {type(d) for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()}
    assert kinds == {FastDropout}


def _lora_pair(tiny_model_dir, dropout: float):
    """The same LoRA model twice, FastDropout in both; the second computes its updates with FusedLora."""
    torch.manual_seed(0)
    plain = _tiny_lora(tiny_model_dir, dropout)
    use_fast_dropout(plain)
    fused = copy.deepcopy(plain)
    assert fuse_lora(fused) == 14
    return plain.train(), fused.train()


def _seeded_loss_and_grads(model, ids, autocast: bool):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks on both sides
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_computes_peft_lora_exactly_in_fp32(tiny_model_dir, dropout):
    plain, fused = _lora_pair(tiny_model_dir, dropout)
    ids = torch.randint(4, plain.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    loss, grads = _seeded_loss_and_grads(plain, ids, autocast=False)
    fused_loss, fused_grads = _seeded_loss_and_grads(fused, ids, autocast=False)
    assert torch.allclose(loss, fused_loss, rtol=1e-6, atol=0)
    assert grads.keys() == fused_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], fused_grads[name], rtol=1e-4, atol=1e-7), name
    # Evaluation (no grad, no dropout) and merging give the same outputs and weights.
    plain.eval(), fused.eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, fused(input_ids=ids).logits, atol=1e-6)
    merged, fused_merged = plain.merge_and_unload(), fused.merge_and_unload()
    for (name, p), q in zip(merged.named_parameters(), fused_merged.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_fused_lora_under_autocast_is_as_close_to_fp32_as_peft(tiny_model_dir):
    """bf16 rounds differently when the scaling and the sum happen inside the matrix product; measured against
    the fp32 result, the fused update is no further off than peft's own bf16 path (both are a few percent)."""
    plain, fused = _lora_pair(tiny_model_dir, dropout=0.1)
    ids = torch.randint(4, plain.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    reference, reference_grads = _seeded_loss_and_grads(copy.deepcopy(plain), ids, autocast=False)
    for_autocast(plain, torch.bfloat16), for_autocast(fused, torch.bfloat16)
    errors = {}
    for kind, model in (("plain", plain), ("fused", fused)):
        loss, grads = _seeded_loss_and_grads(model, ids, autocast=True)
        assert abs(loss - reference) < 5e-3
        errors[kind] = max(
            ((grads[n] - reference_grads[n]).norm() / reference_grads[n].norm()).item() for n in grads
        )
    assert errors["fused"] < 0.1 and errors["fused"] <= 1.5 * errors["plain"], errors


def test_fuse_lora_leaves_other_variants_and_plain_dropout_alone(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules="all-linear", use_dora=True),
    )
    assert fuse_lora(dora) == 0
    plain = _tiny_lora(tiny_model_dir, dropout=0.1)  # nn.Dropout: its mask is not FastDropout's to share
    assert fuse_lora(plain) == 0
    use_fast_dropout(plain)
    assert fuse_lora(plain) == 14
    layer = plain.base_model.model.model.layers[0].mlp.up_proj
    assert isinstance(layer.lora_variant["default"], FusedLora)


def _loss_and_grads(model, ids):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_for_autocast_gives_the_same_loss_and_gradients(tiny_model_dir):
    """Frozen weights cast once (and the tied LM head untied into its own copy) compute bit for bit what
    autocast computed by casting them at every forward; with no dropout, adapters taking bf16 inputs too."""
    model = _tiny_lora(tiny_model_dir, dropout=0.0).train()
    fast = copy.deepcopy(model)
    embedding = fast.get_input_embeddings()
    for_autocast(fast, torch.bfloat16)
    ids = torch.randint(4, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, ids)
    fast_loss, fast_grads = _loss_and_grads(fast, ids)
    assert torch.equal(loss, fast_loss)
    assert grads.keys() == fast_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], fast_grads[name]), name
    # What changed: frozen Linear weights are bf16; adapters, embeddings (and so the residual stream) are not.
    head = fast.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16 and embedding.weight.dtype == torch.float32
    assert head.weight.data_ptr() != embedding.weight.data_ptr()  # untied into a frozen copy
    base = fast.base_model.model.model.layers[0].self_attn.q_proj
    assert base.base_layer.weight.dtype == torch.bfloat16
    assert base.lora_A["default"].weight.dtype == torch.float32
    assert not base.cast_input_dtype_enabled


def test_cast_frozen_linears_leaves_trainable_and_tied_trainable_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # full fine-tuning: everything trains
    assert cast_frozen_linears(model, torch.bfloat16) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model.model.layers[0].requires_grad_(False)  # freeze: only the frozen layer's 7 Linears change
    assert cast_frozen_linears(model, torch.bfloat16) == 7
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.up_proj.weight.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied and trainable: kept tied


def test_attention_auto_is_eager_on_cpu_and_explicit_choices_pass_through():
    expected = None if torch.cuda.is_available() else "eager"
    assert attention(ModelConfig()) == expected
    from transformers import LlamaConfig

    from glmtune.models.chatglm3 import ChatGLM3Config

    assert attention(ModelConfig(), LlamaConfig()) == expected
    assert attention(ModelConfig(), ChatGLM3Config()) is None  # glmtune's ChatGLM3 keeps its SDPA path
    assert attention(ModelConfig(attn_implementation="sdpa")) == "sdpa"
    with pytest.raises(UserError, match="model.attn_implementation"):
        ModelConfig(attn_implementation="flash")


def test_frozen_outputs_are_reused_whatever_the_batch_around_them(tiny_model_dir):
    """The frozen layer runs once per example; later batches (other rows, other padding) get the same logits."""
    from transformers import AutoModel

    from glmtune.methods.speed import frozen_outputs

    body = AutoModel.from_pretrained(tiny_model_dir).eval()
    body.layers[0].requires_grad_(False)
    inner = body.layers[0]
    calls = []
    inner.register_forward_hook(lambda *_: calls.append(1))
    cache = frozen_outputs(body, body.layers, budget_gb=1.0)
    assert cache is not None and cache.frozen == 1

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, body.config.vocab_size, (3, 10), generator=generator)  # [batch, seq]
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0

    def run(rows, ids, mask):
        with torch.no_grad(), cache.training_batch(torch.tensor(rows), mask):
            return body(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, seq, hidden]

    with torch.no_grad():
        plain = body(input_ids=ids, attention_mask=mask).last_hidden_state
    first = run([10, 11, 12], ids, mask)
    assert len(calls) == 2 and len(cache.store) == 3  # the plain pass and the first training pass
    # Example 12 alone (4 tokens, no padding), then 11 and 10 in swapped order: no frozen layer call.
    again = run([12], ids[2:, :4], mask[2:, :4])
    swapped = run([11, 10], ids[[1, 0]], mask[[1, 0]])
    assert len(calls) == 2
    real = mask.bool()
    assert torch.allclose(first[real], plain[real], atol=1e-6)
    assert torch.allclose(again[0], plain[2, :4], atol=1e-5)
    assert torch.allclose(swapped[0][real[1]], plain[1][real[1]], atol=1e-5)
    assert torch.allclose(swapped[1], plain[0], atol=1e-5)
    # A batch with one unseen example runs the frozen layer for all of it; evaluation never uses the store.
    run([10, 13], ids[:2], mask[:2])
    assert len(calls) == 3 and 13 in cache.store
    with torch.no_grad():
        body(input_ids=ids, attention_mask=mask)
    assert len(calls) == 4


def test_frozen_outputs_respect_the_budget_and_dropout(tiny_model_dir):
    from transformers import AutoModel

    from glmtune.methods.speed import frozen_outputs

    body = AutoModel.from_pretrained(tiny_model_dir)
    assert frozen_outputs(body, body.layers, budget_gb=1.0) is None  # nothing frozen
    body.layers[0].requires_grad_(False)  # what freeze with one trainable layer leaves
    assert frozen_outputs(body, body.layers, budget_gb=0.0) is None  # turned off
    body.config.attention_dropout = 0.1  # train.dropout sets the config's rates: outputs are random
    assert frozen_outputs(body, body.layers, budget_gb=1.0) is None
    body.config.attention_dropout = 0.0
    cache = frozen_outputs(body, body.layers, budget_gb=500 * 4 / 2**30)  # 500 fp32 numbers
    assert cache.frozen == 1
    ids = torch.randint(4, body.config.vocab_size, (2, 8))
    with torch.no_grad(), cache.training_batch(torch.tensor([0, 1]), torch.ones_like(ids)):
        body(input_ids=ids)
    assert (
        list(cache.store) == [0] and cache.bytes == 8 * body.config.hidden_size * 4
    )  # the second did not fit


@pytest.mark.usefixtures("reset_accelerate")
def test_freeze_training_with_kept_outputs_matches_recomputing(
    tmp_path, tiny_model_dir, sentiment_file, capsys, monkeypatch
):
    """Three epochs of freeze: the kept outputs give the metrics of recomputing the frozen layers every epoch."""
    import json

    import yaml

    from glmtune.cli import main
    from glmtune.methods.speed import FrozenOutputs
    from tests.helpers import tiny_config

    lookups = []
    original = FrozenOutputs.lookup
    monkeypatch.setattr(FrozenOutputs, "lookup", lambda self, like: lookups.append(1) or original(self, like))

    metrics = {}
    for budget in (4.0, 0.0):
        cfg = tiny_config(
            tiny_model_dir,
            sentiment_file,
            method={"name": "freeze", "trainable_layers": 1, "frozen_cache_gb": budget},
            train={"max_steps": None, "epochs": 3, "lr": 3e-3, "mixed_precision": "no"},
        )
        path = tmp_path / f"{budget}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        main(["train", str(path), "--output", str(tmp_path / str(budget))])
        metrics[budget] = json.loads((tmp_path / str(budget) / "metrics.json").read_text())
        assert metrics[budget]["steps"] == 24  # 64 training reviews, batches of 8, 3 epochs
        said = "the 1 frozen layers run once per training example" in capsys.readouterr().out
        assert said == (budget > 0)
    kept, recomputed = metrics[4.0], metrics[0.0]
    for split in ("validation", "test"):
        for key in ("loss", "accuracy", "auc"):
            assert kept[split][key] == pytest.approx(recomputed[split][key], abs=1e-5), (split, key)
    assert len(lookups) == 16  # epochs 2 and 3: 8 batches each, none recomputed
