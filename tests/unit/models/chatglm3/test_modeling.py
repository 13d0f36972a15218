"""The native model as other code uses it: official keys and config, loading official-style folders, the cache
with `generate`, training (loss, gradient checkpointing, P-tuning v2), peft."""

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from glmtune.models.chatglm3 import ChatGLM3Config, ChatGLM3ForCausalLM, ChatGLM3Model
from glmtune.models.chatglm3.layers import ChatGLM3RotaryEmbedding, apply_rotary_pos_emb
from tests.tiny import TINY_CHATGLM3, require_shared, tiny_chatglm3


def test_official_keys_and_sizes_on_meta_device():
    """The model built from the official config.json has exactly the 200 keys of the official weight index."""
    folder = require_shared("config.json").parent
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    config = ChatGLM3Config.from_pretrained(folder)
    with torch.device("meta"):
        model = ChatGLM3ForCausalLM(config)
    state = model.state_dict()
    assert set(state) == set(index["weight_map"]) and len(state) == 200
    assert sum(t.numel() for t in state.values()) * 2 == index["metadata"]["total_size"]  # fp16 bytes
    assert state["transformer.encoder.layers.0.self_attention.query_key_value.weight"].shape == (4608, 4096)
    assert state["transformer.encoder.layers.27.mlp.dense_h_to_4h.weight"].shape == (27392, 4096)
    # P-tuning v2 adds the prefix encoder, shaped as in official P-tuning checkpoints.
    for projection, extra in (
        (False, {}),
        (True, {"trans.0.weight": (4096, 14336), "trans.2.weight": (14336, 4096)}),
    ):
        with torch.device("meta"):
            prefixed = ChatGLM3ForCausalLM(
                ChatGLM3Config.from_pretrained(folder, pre_seq_len=128, prefix_projection=projection)
            )
        prefix = {
            k.removeprefix("transformer.prefix_encoder."): tuple(v.shape)
            for k, v in prefixed.state_dict().items()
            if k.startswith("transformer.prefix_encoder.")
        }
        assert prefix["embedding.weight"] == (128, 14336)
        assert {k: v for k, v in prefix.items() if k in extra} == extra


def test_config_reads_the_official_file_and_exposes_generic_names():
    folder = require_shared("config.json").parent
    for config in (ChatGLM3Config.from_pretrained(folder), AutoConfig.from_pretrained(folder)):
        assert isinstance(config, ChatGLM3Config)
        assert (config.num_layers, config.num_hidden_layers) == (28, 28)
        assert (config.padded_vocab_size, config.vocab_size) == (65024, 65024)
        assert config.num_key_value_heads == 2 and config.seq_length == 8192 and config.dtype == torch.float16
        assert config.pre_seq_len is None and config.rope_ratio == 1.0
        assert not hasattr(config, "auto_map")  # points at remote code a saved folder does not have
    official = ChatGLM3Config(**json.loads((folder / "config.json").read_text()))  # the raw fields as kwargs
    assert official.to_dict() == ChatGLM3Config.from_pretrained(folder).to_dict()
    config = ChatGLM3Config(**TINY_CHATGLM3, pre_seq_len=4, rope_ratio=50)
    config.num_hidden_layers = 3
    assert config.num_layers == 3
    saved = config.to_dict()
    assert saved["pre_seq_len"] == 4 and saved["rope_ratio"] == 50 and saved["num_layers"] == 3
    with pytest.raises(Exception, match="multi_query_group_num"):  # a strict-dataclass validation error
        ChatGLM3Config(**{**TINY_CHATGLM3, "multi_query_group_num": 3})


def test_auto_registration_is_idempotent():
    import glmtune.models.chatglm3 as chatglm3

    chatglm3._register()  # what a second import would do
    assert AutoConfig.for_model("chatglm", **TINY_CHATGLM3).__class__ is ChatGLM3Config
    assert AutoModelForCausalLM.from_config(ChatGLM3Config(**TINY_CHATGLM3)).__class__ is ChatGLM3ForCausalLM


def test_rope_closed_form_with_rope_ratio():
    """Interleaved pairs in the first half of the head, theta_i = (10000 * rope_ratio) ** (-2i / rotary_dim)."""
    config = ChatGLM3Config(**TINY_CHATGLM3, rope_ratio=50)
    rotary = ChatGLM3RotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 7, 100]])
    x = torch.randn(1, 4, 2, 32, dtype=torch.float64).float()  # [batch, seq, heads, head_dim]
    out = apply_rotary_pos_emb(x, *rotary(positions))
    rotary_dim = 16
    for s, p in enumerate(positions[0].tolist()):
        for i in range(rotary_dim // 2):
            angle = p * (10000 * 50) ** (-2 * i / rotary_dim)
            c, sn = math.cos(angle), math.sin(angle)
            a, b = x[0, s, :, 2 * i], x[0, s, :, 2 * i + 1]
            torch.testing.assert_close(out[0, s, :, 2 * i], a * c - b * sn, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[0, s, :, 2 * i + 1], b * c + a * sn, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[..., rotary_dim:], x[..., rotary_dim:], atol=0, rtol=0)


def test_forward_outputs_and_loss():
    model = tiny_chatglm3(seed=0)
    input_ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, :4] = -100
    out = model(input_ids, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (2, 9, 256) and out.past_key_values is None
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 9, 128)] * 3
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    as_tuple = model(input_ids, labels=labels, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss) and torch.testing.assert_close(as_tuple[1], out.logits)
    embeds = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, out.logits)
    base = model.transformer(input_ids)
    torch.testing.assert_close(base.last_hidden_state, out.hidden_states[-1])
    assert model.get_output_embeddings() is model.transformer.output_layer
    eager = tiny_chatglm3(seed=0)
    eager.config._attn_implementation = "eager"
    torch.testing.assert_close(eager(input_ids).logits, out.logits, atol=1e-5, rtol=1e-5)


def _assert_same_model(a, b):
    input_ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids).logits, b(input_ids).logits, atol=0, rtol=0)


def _official_config_json(model, folder):
    """Rewrites config.json the way the official release spells it (remote-code auto_map, ChatGLMModel)."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    config.update(model.config.to_dict())
    config.pop("dtype", None)
    config["torch_dtype"] = "float32"
    config["architectures"] = ["ChatGLMModel"]
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _write_sharded_bin(model, folder, shards=3):
    """pytorch_model-0000i-of-0000N.bin shards plus an index json, like the official release."""
    state = model.state_dict()
    keys = list(state)
    per_shard = math.ceil(len(keys) / shards)
    weight_map = {}
    for shard in range(shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[shard * per_shard : (shard + 1) * per_shard]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    _official_config_json(model, folder)


def test_save_load_safetensors_and_auto_classes(tmp_path):
    model = tiny_chatglm3(seed=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = ChatGLM3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _assert_same_model(model, reloaded)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(auto, ChatGLM3ForCausalLM)
    _assert_same_model(model, auto)
    base = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(base, ChatGLM3Model)
    torch.testing.assert_close(base.output_layer.weight, model.transformer.output_layer.weight)


def test_load_official_style_sharded_bin(tmp_path):
    model = tiny_chatglm3(seed=3)
    _write_sharded_bin(model, tmp_path)
    reloaded = ChatGLM3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _assert_same_model(model, reloaded)
    assert (
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).__class__ is ChatGLM3ForCausalLM
    )


def test_safetensors_preferred_over_bin(tmp_path):
    model = tiny_chatglm3(seed=4)
    _write_sharded_bin(tiny_chatglm3(seed=5), tmp_path)  # different weights in the .bin shards
    model.save_pretrained(tmp_path)
    reloaded = ChatGLM3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _assert_same_model(model, reloaded)


def test_p_tuning_model_saves_and_reloads(tmp_path):
    model = tiny_chatglm3(seed=6, pre_seq_len=4, prefix_projection=True)
    model.save_pretrained(tmp_path)
    reloaded = ChatGLM3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.pre_seq_len == 4 and reloaded.config.prefix_projection
    _assert_same_model(model, reloaded)
    # Starting P-tuning from a base checkpoint: base weights load, the new prefix is initialised N(0, 1).
    base_folder = tmp_path / "base"
    base = tiny_chatglm3(seed=7)
    base.save_pretrained(base_folder)
    tuned = ChatGLM3ForCausalLM.from_pretrained(base_folder, pre_seq_len=8, dtype=torch.float32)
    assert tuned.config.pre_seq_len == 8
    torch.testing.assert_close(tuned.transformer.output_layer.weight, base.transformer.output_layer.weight)
    assert 0.7 < tuned.transformer.prefix_encoder.embedding.weight.std().item() < 1.3


@pytest.mark.parametrize("pre_seq_len", [None, 3])
def test_generate_with_cache_equals_greedy_recompute(pre_seq_len):
    model = tiny_chatglm3(seed=8, pre_seq_len=pre_seq_len)
    model.generation_config.eos_token_id = None  # random weights: let every row run the full length
    input_ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(9))
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :2], attention_mask[0, :2] = 0, 0  # left padding
    new_tokens = 6
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    fed = []  # sequence lengths the cached run feeds: the prompt, then one token per step
    model.transformer.register_forward_pre_hook(
        lambda _, args, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    assert fed == [6] + [1] * (new_tokens - 1)
    model.transformer._forward_pre_hooks.clear()
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    # a hand-written greedy loop with full recompute, positions as the tokenizer pads them
    sequence, mask = input_ids, attention_mask
    with torch.no_grad():
        for _ in range(new_tokens):
            next_token = model(sequence, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat((sequence, next_token), dim=1)
            mask = torch.cat((mask, torch.ones_like(next_token)), dim=1)
    assert torch.equal(cached, uncached) and torch.equal(cached, sequence)


@pytest.mark.filterwarnings(
    "ignore:.*is deprecated.*:FutureWarning"
)  # v5 renamed it activation checkpointing
def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(10))
    grads = []
    for checkpointing in (False, True):
        model = tiny_chatglm3(seed=11).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.transformer.encoder.layers)
        model(input_ids, labels=input_ids, use_cache=True).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.filterwarnings("ignore:.*is deprecated.*:FutureWarning")
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_p_tuning_trains_only_the_prefix_even_with_checkpointing(use_reentrant):
    """P-tuning v2: freeze everything but transformer.prefix_encoder. The prefix reaches every layer as an
    explicit argument, so checkpointed layers still propagate its gradient."""
    model = tiny_chatglm3(seed=12, pre_seq_len=4, prefix_projection=False).train()
    model.config.hidden_dropout = 0.0
    model.requires_grad_(False)
    model.transformer.prefix_encoder.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    input_ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(13))
    model(input_ids, labels=input_ids).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.prefix_encoder.embedding.weight"}
    grad = model.transformer.prefix_encoder.embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


@pytest.mark.filterwarnings("ignore:.*is deprecated.*:FutureWarning")  # peft calls the v4 names
def test_peft_lora_on_fused_qkv():
    peft = pytest.importorskip("peft")
    model = tiny_chatglm3(seed=14)
    input_ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        before = model(input_ids).logits
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM")
    lora = peft.get_peft_model(model, config)
    lora.enable_input_require_grads()
    lora.print_trainable_parameters()
    out = lora(input_ids=input_ids, labels=input_ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits.detach(), before)  # LoRA B starts at zero
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)
