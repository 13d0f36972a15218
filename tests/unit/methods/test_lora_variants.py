"""LoRA variants (``method.lora_variant``) and LoRA+ (``train.loraplus_lr_ratio``) against peft itself.

- glmtune's model equals one built with plain peft's ``LoraConfig`` options (the independent reference), and the
  fused LoRA path computes what peft's own path computes (logits and gradients) for the variants it takes, DoRA
  staying on peft's path;
- PiSSA/OLoRA: the init is deterministic (a resume re-runs it) and the saved adapter is a plain LoRA on the
  ORIGINAL base; every variant's saved adapter loads in plain peft, in a fresh interpreter, with the same logits
  as the training model, merges to the same logits, and ``restore`` puts the trained tensors back exactly;
- LoRA+: the optimizer gives every tensor the learning rate peft's ``create_loraplus_optimizer`` gives it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from glmtune import methods
from glmtune.core.config import MethodConfig, TrainConfig
from glmtune.core.errors import UserError
from glmtune.core.runs import RunDir
from glmtune.methods import variants
from glmtune.methods.speed import FusedLora, fuse_lora
from glmtune.models.causal import CausalLM
from glmtune.models.heads import SequenceClassifier
from tests.helpers import ENV, REPO

VARIANTS = ("none", "dora", "rslora", "pissa", "olora")
R, ALPHA = 4, 8
IDS = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(0))  # [batch, seq]


def _base(model_dir, causal: bool = True) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(0)
    if causal:
        return CausalLM(AutoModelForCausalLM.from_pretrained(model_dir))
    return SequenceClassifier(AutoModel.from_pretrained(model_dir), 2)


def _method(variant: str, dropout: float = 0.0) -> MethodConfig:
    return MethodConfig(name="lora", lora_r=R, lora_alpha=ALPHA, lora_dropout=dropout, lora_variant=variant)


def _applied(model_dir, variant: str, causal: bool = True, dropout: float = 0.0) -> nn.Module:
    """glmtune's model with the variant applied and its trainable tensors moved off their init ("trained")."""
    holder = _base(model_dir, causal)
    methods.apply(holder, _method(variant, dropout))
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if p.requires_grad and not name.startswith("head."):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return holder


def _logits(holder: nn.Module) -> torch.Tensor:
    holder.eval()
    with torch.no_grad():
        if isinstance(holder, CausalLM):
            return holder.backbone(input_ids=IDS).logits  # [batch, seq, vocab]
        return holder(IDS, torch.ones_like(IDS))  # [batch, labels]


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


# --------------------------------------------------------------------------- what each variant is


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_variant_is_peft_own_with_the_same_weights(tiny_model_dir, variant):
    """glmtune's adapters equal those of a model built directly with peft's options for the variant."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ours = _base(tiny_model_dir)
    methods.apply(ours, _method(variant))
    options = {
        "none": {},
        "dora": {"use_dora": True},
        "rslora": {"use_rslora": True},
        "pissa": {"init_lora_weights": "pissa"},
        "olora": {"init_lora_weights": "olora"},
    }[variant]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)  # the same draws for A as in ours (the load above consumed none)
    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", **options)
    theirs = get_peft_model(base, config)
    mine = dict(ours.backbone.named_parameters())
    for name, p in theirs.named_parameters():  # adapters and the (residual) base alike
        assert torch.equal(mine[name], p), name
    layer = _lora_layers(ours.backbone)[0]
    scale = ALPHA / R**0.5 if variant == "rslora" else ALPHA / R
    assert layer.scaling["default"] == pytest.approx(scale)
    kinds = {type(v).__name__ for m in _lora_layers(ours.backbone) for v in m.lora_variant.values()}
    # The fused path serves every variant it computes exactly; DoRA stays on peft's own path.
    assert kinds == ({"DoraLinearVariant"} if variant == "dora" else {FusedLora.__name__})


@pytest.mark.parametrize("variant", ["rslora", "pissa", "olora", "dora"])
def test_fused_path_equals_peft_path(tiny_model_dir, variant):
    """Logits and gradients of glmtune's model (fused where it can) equal those of the same model on peft's path."""
    fused = _applied(tiny_model_dir, variant)
    plain = copy.deepcopy(fused)
    for layer in _lora_layers(plain.backbone):  # back to peft's own path: its DoRA variant, else vanilla LoRA
        for name in list(layer.lora_variant):
            if isinstance(layer.lora_variant[name], FusedLora):
                del layer.lora_variant[name]
    assert fuse_lora(copy.deepcopy(plain)) == (0 if variant == "dora" else 14)
    grads = []
    for model in (fused, plain):
        model.train()
        loss = model.backbone(input_ids=IDS, labels=IDS).loss
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-7), name
    assert torch.allclose(_logits(fused), _logits(plain), atol=1e-6)


@pytest.mark.parametrize("variant", variants.REINIT)
def test_pissa_olora_start_where_the_base_is_and_init_deterministically(tiny_model_dir, variant):
    """The residual base plus A₀B₀ is the base (the untuned model is unchanged), and a second init from the same
    base (what a resumed run does before loading A and B) gives bit-identical weights."""
    first, second = _base(tiny_model_dir), _base(tiny_model_dir)
    reference = _logits(_base(tiny_model_dir))
    methods.apply(first, _method(variant))
    methods.apply(second, _method(variant))
    assert torch.allclose(_logits(first), reference, atol=1e-5)
    for (name, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q), name
    residual = dict(first.backbone.named_parameters())
    untouched = dict(_base(tiny_model_dir).backbone.named_parameters())
    assert not torch.equal(  # the base weights really were rewritten
        residual["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
        untouched["model.layers.0.self_attn.q_proj.weight"],
    )


def test_pissa_olora_refused_on_a_quantized_base():
    with pytest.raises(UserError, match="method.lora_variant"):
        variants.check_base("pissa", quantized=True)
    variants.check_base("dora", quantized=True)  # DoRA (peft) works over bitsandbytes layers


def test_variant_needs_lora():
    with pytest.raises(UserError, match="method.lora_variant"):
        MethodConfig(name="full", lora_variant="dora")
    with pytest.raises(UserError, match="one of: none, dora"):
        MethodConfig(lora_variant="qlora")


# --------------------------------------------------------------------------- saved, reloaded, merged


_PLAIN_PEFT = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM
base_dir, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
out = {}
for spec in json.loads(sys.argv[3]):
    auto = AutoModelForCausalLM if spec["causal"] else AutoModel
    model = PeftModel.from_pretrained(auto.from_pretrained(base_dir), spec["adapter"]).eval()
    with torch.no_grad():
        result = model(input_ids=ids)
    out[spec["adapter"]] = (result.logits if spec["causal"] else result.last_hidden_state).tolist()
print(json.dumps(out))
"""


def _hidden(holder: nn.Module) -> torch.Tensor:
    """The body's last hidden states (what a classification run's adapter changes), [batch, seq, hidden]."""
    with torch.no_grad():
        return holder.backbone.eval()(input_ids=IDS).last_hidden_state


def test_saved_adapters_load_in_plain_peft_in_a_fresh_interpreter(tmp_path, tiny_model_dir):
    """Every variant's adapter/, of an sft run (a causal LM) and of a classification run (its body), loaded by
    plain peft onto the ORIGINAL base in one new process: the logits or hidden states of the training model
    (PiSSA/OLoRA's on their residual base)."""
    expected, specs = {}, []
    for causal in (True, False):
        for variant in VARIANTS:
            holder = _applied(tiny_model_dir, variant, causal)
            run = RunDir(tmp_path / f"{variant}-{'sft' if causal else 'classification'}")
            run.path.mkdir()
            methods.save(holder, _method(variant), run)
            expected[str(run.adapter)] = _logits(holder) if causal else _hidden(holder)
            specs.append({"adapter": str(run.adapter), "causal": causal})
    # PiSSA/OLoRA: a plain LoRA of rank 2r with the same scale (peft's conversion)
    config = json.loads((tmp_path / "pissa-sft" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (2 * R, 2 * ALPHA, True)
    args = [
        sys.executable,
        "-c",
        _PLAIN_PEFT,
        str(tiny_model_dir),
        json.dumps(IDS.tolist()),
        json.dumps(specs),
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got.keys() == expected.keys()
    for adapter, want in expected.items():
        assert torch.allclose(torch.tensor(got[adapter]), want, atol=2e-5), adapter


@pytest.mark.parametrize("variant", VARIANTS)
def test_reload_merge_and_restore(tmp_path, tiny_model_dir, variant):
    """methods.load (predict/serve) on the untouched base and its peft merge give the training model's logits;
    methods.restore (the best weights back at the end of training) puts the trained tensors back exactly."""
    holder = _applied(tiny_model_dir, variant)
    want = _logits(holder)
    trained = {n: p.detach().clone() for n, p in holder.named_parameters() if p.requires_grad}
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    methods.save(holder, _method(variant), run)

    loaded = _base(tiny_model_dir)
    methods.load(loaded, _method(variant), run)
    assert torch.allclose(_logits(loaded), want, atol=2e-5)
    merged = loaded.backbone.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=IDS).logits, want, atol=2e-5)

    with torch.no_grad():
        for p in holder.parameters():
            if p.requires_grad:
                p.zero_()
    methods.restore(holder, _method(variant), run)
    for name, p in holder.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, trained[name]), name


def test_converted_adapter_holds_the_trained_and_the_initial_tensors(tmp_path, tiny_model_dir):
    """peft's conversion [A ; A₀], [B | −B₀]: the first half is what trained (restore takes it back)."""
    holder = _base(tiny_model_dir)
    methods.apply(holder, _method("pissa"))
    initial = {n: p.detach().clone() for n, p in holder.backbone.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in holder.parameters():
            if p.requires_grad:
                p.mul_(1.5)  # "trained"
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    methods.save(holder, _method("pissa"), run)
    saved = load_file(str(run.adapter / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    a0, b0 = (initial[key.format(x).replace(".weight", ".default.weight")] for x in "AB")
    assert torch.equal(saved[key.format("A")], torch.cat([1.5 * a0, a0], dim=0))  # [2r, in]
    assert torch.equal(saved[key.format("B")], torch.cat([1.5 * b0, -b0], dim=1))  # [out, 2r]


# --------------------------------------------------------------------------- LoRA+


def test_loraplus_learning_rates_equal_peft_create_loraplus_optimizer(tiny_model_dir):
    """Every tensor's learning rate as peft's LoRA+ optimizer (the authors' reference) sets it, DoRA's
    magnitudes included; the classification head keeps its own."""
    from peft.optimizers import create_loraplus_optimizer

    from glmtune.train.loop import build_optimizer

    holder = _base(tiny_model_dir, causal=False)
    methods.apply(holder, _method("dora"))
    train = TrainConfig(lr=1e-3, head_lr=5e-3, loraplus_lr_ratio=16.0)
    ours = build_optimizer(holder, train)
    theirs = create_loraplus_optimizer(holder.backbone, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0)
    lr_of = {id(p): g["lr"] for g in ours.param_groups for p in g["params"]}
    reference = {id(p): g["lr"] for g in theirs.param_groups for p in g["params"]}
    assert reference and set(reference) < set(lr_of)
    for pid, lr in reference.items():
        assert lr_of[pid] == pytest.approx(lr)
    assert {lr_of[id(p)] for p in holder.head.parameters()} == {5e-3}
    assert {g["lr"] for g in ours.param_groups} == {1e-3, 1.6e-2, 5e-3}


def test_loraplus_without_lora_is_refused(tiny_model_dir):
    from glmtune.train.loop import build_optimizer

    holder = _base(tiny_model_dir, causal=False)
    methods.apply(holder, MethodConfig(name="full"))
    with pytest.raises(UserError, match="train.loraplus_lr_ratio"):
        build_optimizer(holder, TrainConfig(loraplus_lr_ratio=4.0))
