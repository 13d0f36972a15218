"""infer.prune on tiny in-memory models: Block Influence and channel importance against hand computations (scipy's
cosine distance), the cut models against models built at the smaller size, reload identity, exact unstructured
sparsity, and the request's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine

from glmtune.core.errors import UserError
from glmtune.infer.prune import Request, count_parameters, importance, surgery
from tests.tiny import tiny_gemma_config, tiny_llama_config

IDS = torch.tensor([[2, 5, 9, 14, 7, 3, 11, 20], [2, 8, 6, 13, 0, 0, 0, 0]])  # row 2 right-padded
MASK = (IDS != 0).long()  # [batch, seq]


def llama(layers: int = 4, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(num_hidden_layers=layers, **overrides)).eval()


def gemma(layers: int = 4):
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    types = ["sliding_attention", "full_attention"] * (layers // 2)
    return Gemma3ForCausalLM(tiny_gemma_config(num_hidden_layers=layers, layer_types=types)).eval()


def forward(model):
    return lambda batch: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def logits(model, ids=IDS, mask=MASK) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits  # [batch, seq, vocab]


# --------------------------------------------------------------------------- importance


def test_block_influence_is_the_mean_cosine_distance_over_real_tokens():
    model = llama()
    scores = importance.measure(model, [{"input_ids": IDS, "attention_mask": MASK}], forward(model))
    with torch.no_grad():
        hidden = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
    real = MASK.bool().numpy()
    # hidden_states[i] enters layer i and hidden_states[i + 1] leaves it (the last one is after the final norm,
    # so the last layer is checked through its own output below).
    for i in range(3):
        a, b = hidden[i].numpy()[real], hidden[i + 1].numpy()[real]  # [tokens, hidden]
        expected = np.mean([cosine(x, y) for x, y in zip(a, b)])
        assert scores.block_influence[i] == pytest.approx(expected, abs=1e-5)
    assert scores.tokens == int(MASK.sum())
    assert importance.least_influential(scores.block_influence, 2) == sorted(
        np.argsort(scores.block_influence)[:2].tolist()
    )


def test_channel_importance_is_mean_activation_times_column_norm():
    model = llama(layers=2)
    scores = importance.measure(
        model, [{"input_ids": IDS, "attention_mask": MASK}], forward(model), channels=True
    )
    mlp = model.model.layers[1].mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    logits(model)
    handle.remove()
    x = seen["x"][MASK.bool()]  # [tokens, hidden]
    act = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)  # [tokens, inter]
    expected = act.abs().mean(0) * mlp.down_proj.weight.norm(dim=0)  # [inter]
    assert torch.allclose(scores.channels[1], expected, atol=1e-6)


# --------------------------------------------------------------------------- the cuts


@pytest.mark.parametrize("build", [llama, gemma])
def test_dropped_layers_equal_a_model_built_with_the_kept_layers(build, tmp_path):
    model = build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.drop_layers(model, [1, 2])
    assert surgery.num_layers(model) == 2 and model.config.num_hidden_layers == 2
    if hasattr(model.config, "layer_types"):  # Gemma: each kept layer keeps its attention type
        assert model.config.layer_types == ["sliding_attention", "full_attention"]
    # Reference: a fresh 2-layer model given layers 0 and 3 of the original.
    reference = build(layers=2)
    renamed = {k.replace("layers.3.", "layers.1."): v for k, v in state.items() if ".layers.1." not in k}
    renamed = {k: v for k, v in renamed.items() if ".layers.2." not in k}
    reference.load_state_dict(renamed)
    assert torch.allclose(logits(model), logits(reference), atol=1e-6)
    # Saved and reloaded with plain transformers: identical, cache and generation included.
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert count_parameters(reloaded) == count_parameters(model) < count_parameters(build())
    assert torch.equal(logits(reloaded), logits(model))
    prompt = IDS[:1, :4]
    same = [m.generate(prompt, max_new_tokens=4, do_sample=False) for m in (model, reloaded)]
    assert torch.equal(*same)


def test_kept_mlp_channels_equal_zeroing_the_others(tmp_path):
    model = llama(layers=2)
    reference = llama(layers=2)
    keep = [torch.tensor([0, 5, 9, 33, 40, 63]), torch.tensor([1, 2, 3, 50, 51, 52])]
    surgery.shrink_mlp(model, keep)
    with torch.no_grad():
        for layer, channels in zip(reference.model.layers, keep):
            dropped = torch.ones(64, dtype=torch.bool)
            dropped[channels] = False
            layer.mlp.down_proj.weight[:, dropped] = 0  # a dropped channel writes nothing back
    assert model.config.intermediate_size == 6
    assert torch.allclose(logits(model), logits(reference), atol=1e-6)
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path).eval()), logits(model))


def test_unstructured_zeroes_exactly_the_fraction_of_smallest_weights():
    model = llama(layers=2)
    before = {id(m): m.weight.detach().clone() for m in surgery.layer_linears(model)}
    zeroed = surgery.unstructured(model, 0.3)
    total = 0
    for linear in surgery.layer_linears(model):
        n = linear.weight.numel()
        assert int((linear.weight == 0).sum()) == round(0.3 * n)  # no weight was 0 before
        original = before[id(linear)].abs()
        kept = linear.weight != 0
        assert original[~kept].max() <= original[kept].min()  # the smallest magnitudes went
        assert not hasattr(linear, "weight_mask")  # made permanent
        total += round(0.3 * n)
    assert zeroed == total


def test_unsupported_mlp_layout_and_bad_requests_are_one_line_errors():
    from torch import nn

    with pytest.raises(UserError, match="--mlp-sparsity"):
        surgery.mlp_parts(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2)))
    with pytest.raises(UserError, match="nothing to prune"):
        Request()
    with pytest.raises(UserError, match="--sparsity"):
        Request(sparsity=1.5)
    with pytest.raises(UserError, match="one of them"):
        Request(layers=1, sparsity=0.5)
    with pytest.raises(UserError, match="--layers"):
        Request(layers=0)
