"""ChatGLM3 through every method: 2-step CLI runs of a tiny random ChatGLM3 with the real tokenizer.

For each of full, freeze, LoRA (all-linear and [query_key_value]) and P-tuning v2 (with and without
prefix_projection): the run folder, exactly the expected tensors saved, trained ones changed, and
``glmtune predict`` reloading the run and reproducing a test probability.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from glmtune.core.errors import UserError
from tests.helpers import assert_predict_reproduces, tiny_config, train

PRE_SEQ_LEN = 4  # P-tuning virtual tokens: small, the mechanism is the same at 128


def base_body(model_dir: Path) -> dict:
    """The base checkpoint's transformer tensors, keyed as the classifier's body (``ChatGLM3Model``) names them."""
    base = load_file(str(model_dir / "model.safetensors"))
    return {k.removeprefix("transformer."): v for k, v in base.items()}


def initial_prefix(cfg: dict) -> dict:
    """The prefix encoder a run starts from: built like train.py builds it (seeded, then the loader), not trained."""
    from accelerate.utils import set_seed

    from glmtune import methods
    from glmtune.core import config as config_mod
    from glmtune.models.load import load_backbone, load_config

    resolved = config_mod.from_dict(cfg)
    overrides = methods.config_overrides(resolved.method, load_config(resolved.model))
    set_seed(resolved.train.seed)
    backbone = load_backbone(resolved.model, config_overrides=overrides)
    return {k: v for k, v in backbone.state_dict().items() if k.startswith("prefix_encoder.")}


METHODS = {
    "full": {"name": "full"},
    "freeze": {"name": "freeze", "trainable_layers": 1},
    "lora-all-linear": {"name": "lora", "lora_target": "all-linear"},
    "lora-qkv": {"name": "lora", "lora_target": ["query_key_value"]},
    "ptuning": {"name": "ptuning", "pre_seq_len": PRE_SEQ_LEN},
    "ptuning-projection": {"name": "ptuning", "pre_seq_len": PRE_SEQ_LEN, "prefix_projection": True},
    # As the official recipe trains it: the prefix's gradient must survive activation checkpointing.
    "ptuning-checkpointing": {"name": "ptuning", "pre_seq_len": PRE_SEQ_LEN},
}
LORA_MODULES = {
    "lora-all-linear": {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
    "lora-qkv": {"query_key_value"},
}


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("variant", list(METHODS))
def test_chatglm3_trains_and_reloads(tmp_path, chatglm3_dir, sentiment_file, variant, capsys):
    method = METHODS[variant]
    cfg = tiny_config(chatglm3_dir, sentiment_file, method={**method, "lora_r": 4, "lora_alpha": 8})
    cfg["train"]["gradient_checkpointing"] = variant.endswith("checkpointing")
    run = train(tmp_path, cfg)
    for name in ("config.yaml", "labels.json", "metrics.json", "predictions.jsonl", "head.safetensors"):
        assert (run / name).is_file(), name
    saved_method = yaml.safe_load((run / "config.yaml").read_text())["method"]
    assert saved_method["name"] == method["name"]

    base = base_body(chatglm3_dir)
    if method["name"] == "lora":
        assert not (run / "body.safetensors").exists()
        adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        # "base_model.model.encoder.layers.0.self_attention.query_key_value.lora_A.weight" -> "query_key_value"
        wrapped = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter}
        assert wrapped == LORA_MODULES[variant], "all-linear must never wrap output_layer"
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero and must have moved"
    else:
        body = load_file(str(run / "body.safetensors"))
        if method["name"] == "full":  # every parameter but the LM output layer the body never calls
            expected = {k for k in base if k != "output_layer.weight" and not k.endswith("inv_freq")}
        elif method["name"] == "freeze":  # the top layer and the final norm after it
            expected = {k for k in base if k.startswith("encoder.layers.1.")}
            expected.add("encoder.final_layernorm.weight")
        else:  # ptuning: only the model's own prefix encoder
            expected = {"prefix_encoder.embedding.weight"}
            if method.get("prefix_projection"):
                expected |= {f"prefix_encoder.trans.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
            assert saved_method["pre_seq_len"] == PRE_SEQ_LEN
            assert saved_method["prefix_projection"] == bool(method.get("prefix_projection"))
            assert body["prefix_encoder.embedding.weight"].shape[0] == PRE_SEQ_LEN
        assert set(body) == expected
        start = initial_prefix(cfg) if method["name"] == "ptuning" else base
        changed = {k for k, v in body.items() if not v.equal(start[k])}
        assert changed, "trained tensors must differ from where training started"
        # ...by two small optimizer steps: a prefix rebuilt from another init would be off by O(1).
        assert max((body[k] - start[k]).abs().max().item() for k in body) < 0.1
    assert_predict_reproduces(run, capsys)


def test_ptuning_on_a_model_without_a_prefix_encoder_is_one_line(tmp_path, tiny_model_dir, sentiment_file):
    """A non-ChatGLM3 model is refused before it loads (field method.name), not silently given a dead setting."""
    from glmtune import methods
    from glmtune.core import config as config_mod
    from glmtune.models.load import load_config

    cfg = config_mod.from_dict(tiny_config(tiny_model_dir, sentiment_file, method={"name": "ptuning"}))
    with pytest.raises(UserError) as error:
        methods.config_overrides(cfg.method, load_config(cfg.model))
    assert error.value.field == "method.name" and "ChatGLM3" in str(error.value.expected)


def test_a_setting_the_config_does_not_have_is_refused():
    """The loader never adds a setting the architecture would silently ignore."""
    from transformers import LlamaConfig

    from glmtune.models.load import override_config

    with pytest.raises(UserError, match="has no 'pre_seq_len' setting"):
        override_config(LlamaConfig(), {"pre_seq_len": 4})
