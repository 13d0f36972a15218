"""SequenceClassifier on tiny random bodies built in memory: pooling, padding invariance, head save/load."""

from __future__ import annotations

import math

import pytest
import torch

from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError
from glmtune.models import SequenceClassifier, load_classifier
from glmtune.models.heads import last_token_index, pool
from tests.tiny import (
    save_chatglm3_with_auto_map,
    save_model,
    tiny_body,
    tiny_gemma_config,
    tiny_llama_config,
)

PAD = 0


@pytest.fixture(scope="module")
def llama_body():
    return tiny_body(tiny_llama_config())


@pytest.fixture(scope="module")
def gemma_body():
    return tiny_body(tiny_gemma_config())


@pytest.fixture(scope="module")
def gpt2_body():
    """Absolute position embeddings: left padding is harmless only with positions taken from the mask."""
    from transformers import GPT2Config

    return tiny_body(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=30, n_positions=64))


def batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``rows`` to one length on ``side``: input_ids and attention_mask, both [batch, seq]."""
    width = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        pad = [PAD] * (width - len(row))
        ids.append(row + pad if side == "right" else pad + row)
        mask.append([1] * len(row) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(row))
    return torch.tensor(ids), torch.tensor(mask)


ROWS = [[2, 5, 6, 7, 8, 9, 10, 11], [2, 12, 13], [2, 14, 15, 16, 17, 18], [2]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_pooling_picks_the_last_real_token(side):
    _, mask = batch(ROWS, side)
    hidden = torch.randn(len(ROWS), mask.shape[1], 8)  # [batch, seq, hidden]
    expected = []
    for row in range(len(ROWS)):  # the manual loop: scan for the last position whose mask is 1
        last = max(i for i in range(mask.shape[1]) if mask[row, i] == 1)
        expected.append(hidden[row, last])
    assert torch.equal(pool(hidden, mask, "last"), torch.stack(expected))
    if side == "left":
        assert last_token_index(mask).tolist() == [7] * len(ROWS)


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_pooling_averages_real_tokens_only(side):
    _, mask = batch(ROWS, side)
    hidden = torch.randn(len(ROWS), mask.shape[1], 8)  # [batch, seq, hidden]
    hidden[mask == 0] = float("nan")  # what a fully masked attention row can produce: must not leak
    expected = torch.stack([hidden[r][mask[r] == 1].mean(dim=0) for r in range(len(ROWS))])
    assert torch.allclose(pool(hidden, mask, "mean"), expected, atol=1e-6)


def test_pooling_without_mask_uses_every_token():
    hidden = torch.randn(2, 3, 4)  # [batch, seq, hidden]
    assert torch.equal(pool(hidden, None, "last"), hidden[:, -1])
    assert torch.allclose(pool(hidden, None, "mean"), hidden.mean(dim=1))


@pytest.fixture(scope="module")
def chatglm3_body(tmp_path_factory):
    from glmtune.models import load_backbone

    path = save_chatglm3_with_auto_map(tmp_path_factory.mktemp("chatglm3"))
    return load_backbone(ModelConfig(name_or_path=str(path))).eval()


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", ["llama", "gemma", "gpt2", "chatglm3"])
def test_padding_does_not_change_a_rows_logits(family, side, pooling, request):
    classifier = SequenceClassifier(request.getfixturevalue(f"{family}_body"), 3, pooling=pooling).eval()
    ids, mask = batch(ROWS, side)
    with torch.no_grad():
        batched = classifier(ids, mask)  # [batch, 3]
        alone = torch.cat(
            [classifier(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)) for row in ROWS]
        )
    assert batched.dtype == torch.float32 and batched.shape == (len(ROWS), 3)
    assert torch.isfinite(batched).all()
    assert torch.allclose(batched, alone, atol=1e-5), (batched - alone).abs().max()


def test_head_starts_at_zero_so_the_first_loss_is_ln_k(llama_body):
    classifier = SequenceClassifier(llama_body, 4)
    ids, mask = batch(ROWS, "right")
    with torch.no_grad():
        logits = classifier(ids, mask)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])[: len(logits)])
    assert torch.equal(logits, torch.zeros_like(logits)) and loss.item() == pytest.approx(math.log(4))


def test_head_is_fp32_small_and_computes_in_fp32_under_autocast(llama_body):
    from copy import deepcopy

    classifier = SequenceClassifier(deepcopy(llama_body).to(torch.bfloat16), 4)
    assert classifier.head.weight.dtype == torch.float32 and classifier.head.weight.shape == (4, 32)
    assert classifier.head.weight.std() < 0.05 and torch.equal(classifier.head.bias, torch.zeros(4))
    ids, mask = batch(ROWS, "right")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = classifier(ids, mask)
    assert logits.dtype == torch.float32


def test_head_saves_and_reloads_bit_exactly(tmp_path, llama_body):
    classifier = SequenceClassifier(llama_body, 3)
    torch.nn.init.normal_(classifier.head.weight)
    torch.nn.init.normal_(classifier.head.bias)
    classifier.save_head(tmp_path / "head.safetensors")
    other = SequenceClassifier(llama_body, 3)
    other.load_head(tmp_path / "head.safetensors")
    assert torch.equal(other.head.weight, classifier.head.weight)
    assert torch.equal(other.head.bias, classifier.head.bias)
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]  # no temporary left behind


def test_head_of_another_shape_or_pooling_is_refused(tmp_path, llama_body):
    path = tmp_path / "head.safetensors"
    SequenceClassifier(llama_body, 3).save_head(path)
    with pytest.raises(UserError, match=r"head\.safetensors: head has shapes .*expected .*\(4, 32\)"):
        SequenceClassifier(llama_body, 4).load_head(path)
    with pytest.raises(
        UserError, match="field 'model.pooling': head was trained with pooling 'last'; expected last"
    ):
        SequenceClassifier(llama_body, 3, pooling="mean").load_head(path)
    with pytest.raises(UserError, match="classification head not found"):
        SequenceClassifier(llama_body, 3).load_head(tmp_path / "missing.safetensors")


def test_passthroughs_config_checkpointing_and_peft(llama_body):
    from copy import deepcopy

    from peft import LoraConfig, get_peft_model

    classifier = SequenceClassifier(deepcopy(llama_body), 2)
    assert classifier.config is classifier.backbone.config and classifier.num_labels == 2
    classifier.gradient_checkpointing_enable()
    assert classifier.backbone.is_activation_checkpointing
    classifier.backbone = get_peft_model(classifier.backbone, LoraConfig(r=2, target_modules="all-linear"))
    classifier.train()
    ids, mask = batch(ROWS, "left")
    classifier(ids, mask).sum().backward()  # checkpointed + LoRA + frozen embeddings: gradients still flow
    lora_grads = [p.grad for n, p in classifier.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert classifier.head.weight.grad is not None
    classifier.gradient_checkpointing_disable()
    assert not classifier.backbone.is_activation_checkpointing


def test_load_classifier_from_a_folder(tmp_path):
    path = save_model(tmp_path / "llama", tiny_llama_config())
    classifier, tokenizer = load_classifier(
        ModelConfig(name_or_path=str(path), pooling="mean"), 5, dropout=0.2
    )
    assert classifier.pooling == "mean" and classifier.num_labels == 5 and classifier.dropout.p == 0.2
    assert classifier.config.attention_dropout == 0.2 and not hasattr(classifier.backbone, "lm_head")
    enc = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert classifier(enc["input_ids"], enc["attention_mask"]).shape == (2, 5)
    plain, _ = load_classifier(ModelConfig(name_or_path=str(path)), 2)
    assert plain.dropout.p == 0.0 and plain.config.attention_dropout == 0.0
