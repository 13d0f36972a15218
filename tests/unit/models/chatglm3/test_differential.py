"""Differential parity with diffusers' port of the official ChatGLM3 model at realistic small shapes.

diffusers (Kolors) ships the official `ChatGLMModel` verbatim (sequence-first, legacy tuple cache, no LM head).
Both models get the identical state dict; we compare per-layer hidden states, the final-normed output and logits
(ours vs the reference's `output_layer` on its output). On this machine every comparison is bit-identical, in
fp32, bf16 and fp16; the tolerances only leave room for other kernels. Known friction of the port on
transformers 5: its config has no `use_cache` default any more (pass `use_cache=True` or it returns no cache),
and `empty_init=True` (its default) leaves weights uninitialised; neither affects what is compared here.
"""

import pytest
import torch

from tests.tiny import TINY_CHATGLM3, tiny_chatglm3

kolors = pytest.importorskip(
    "diffusers.pipelines.kolors.text_encoder", reason="diffusers (dev extra) not installed"
)

FP32 = dict(atol=2e-5, rtol=1e-5)


def reference_for(ours):
    """The diffusers ChatGLMModel with our weights (keys minus the `transformer.` prefix)."""
    config = kolors.ChatGLMConfig(**ours.config.to_dict())
    reference = kolors.ChatGLMModel(config, empty_init=False).eval()
    state = {key.removeprefix("transformer."): value for key, value in ours.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    return reference.to(ours.dtype)


def run_reference(reference, input_ids, attention_mask=None, position_ids=None, past=None):
    """Batch-first (last_hidden_state, logits, per-layer hidden states, cache) from the reference."""
    out = reference(
        input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past,
        use_cache=True,
        output_hidden_states=True,
        return_dict=True,
    )
    last = out.last_hidden_state.transpose(0, 1)
    hidden = [h.transpose(0, 1) for h in out.hidden_states[:-1]]
    return last, reference.output_layer(last), hidden, out.past_key_values


def left_padded(batch=3, seq=10, vocab=256, seed=0):
    """Random ids with tokenizer-style left padding: pad id 0, mask 0, position ids 0 on the pads."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (batch, seq), generator=generator)
    lengths = [seq, seq - 3, seq - 6][:batch]
    attention_mask = torch.zeros(batch, seq, dtype=torch.long)
    position_ids = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, : seq - length] = 0
        attention_mask[row, seq - length :] = 1
        position_ids[row, seq - length :] = torch.arange(length)
    return input_ids, attention_mask, position_ids


@pytest.fixture(scope="module")
def pair():
    ours = tiny_chatglm3(seed=1)
    return ours, reference_for(ours)


@torch.no_grad()
def test_causal_prefill(pair):
    ours, reference = pair
    input_ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    out = ours(input_ids, output_hidden_states=True)
    last, logits, hidden, _ = run_reference(reference, input_ids)
    assert out.logits.shape == (2, 12, TINY_CHATGLM3["padded_vocab_size"])
    assert len(out.hidden_states) == TINY_CHATGLM3["num_layers"] + 1
    for mine, theirs in zip(out.hidden_states[:-1], hidden):  # embeddings, then each layer's output
        torch.testing.assert_close(mine, theirs, **FP32)
    torch.testing.assert_close(out.hidden_states[-1], last, **FP32)  # the final-normed output
    torch.testing.assert_close(out.logits, logits, **FP32)


@torch.no_grad()
def test_left_padded_batch(pair):
    ours, reference = pair
    input_ids, attention_mask, position_ids = left_padded()
    out = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True)
    last, logits, _, _ = run_reference(reference, input_ids, attention_mask, position_ids)
    torch.testing.assert_close(out.hidden_states[-1], last, **FP32)  # pad rows included: same mask rule
    torch.testing.assert_close(out.logits, logits, **FP32)
    # Without explicit position_ids they are derived from the mask the same way the tokenizer pads them.
    derived = ours(input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(derived.logits, out.logits, atol=0, rtol=0)
    # Padding never leaks: each row alone, unpadded, gives the same logits on its real tokens.
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].bool()
        alone = ours(input_ids[row, real][None])
        torch.testing.assert_close(alone.logits[0], out.logits[row, real], **FP32)


@torch.no_grad()
def test_cached_decode_matches_full_recompute_and_reference(pair):
    ours, reference = pair
    input_ids, attention_mask, position_ids = left_padded(seed=3)
    prompt, steps = 7, 3  # prefill 7 tokens, then decode 3 one at a time
    out = ours(
        input_ids[:, :prompt],
        attention_mask=attention_mask[:, :prompt],
        position_ids=position_ids[:, :prompt],
        use_cache=True,
    )
    _, _, _, past = run_reference(
        reference, input_ids[:, :prompt], attention_mask[:, :prompt], position_ids[:, :prompt]
    )
    cache = out.past_key_values
    full = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    for step in range(prompt, prompt + steps):
        mask = attention_mask[:, : step + 1]
        token, position = input_ids[:, step : step + 1], position_ids[:, step : step + 1]
        out = ours(token, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        _, logits, _, past = run_reference(reference, token, mask, position, past)
        real = attention_mask[:, step].bool()  # rows whose new token is real (others are still padding)
        torch.testing.assert_close(out.logits[real, 0], full.logits[real, step], **FP32)
        torch.testing.assert_close(out.logits[real, 0], logits[real, 0], **FP32)
    assert cache.get_seq_length() == prompt + steps


@pytest.mark.parametrize("prefix_projection", [False, True])
@torch.no_grad()
def test_p_tuning_prefix(prefix_projection):
    ours = tiny_chatglm3(seed=4, pre_seq_len=3, prefix_projection=prefix_projection)
    assert (
        any(key.startswith("transformer.prefix_encoder.trans.") for key in ours.state_dict())
        == prefix_projection
    )
    reference = reference_for(ours)
    input_ids, attention_mask, position_ids = left_padded(seed=5)
    prompt = 8
    out = ours(
        input_ids[:, :prompt],
        attention_mask=attention_mask[:, :prompt],
        position_ids=position_ids[:, :prompt],
        use_cache=True,
    )
    _, logits, _, past = run_reference(
        reference, input_ids[:, :prompt], attention_mask[:, :prompt], position_ids[:, :prompt]
    )
    real = attention_mask[
        :, :prompt
    ].bool()  # pad rows differ: the reference does not re-open them past a prefix
    torch.testing.assert_close(out.logits[real], logits[real], **FP32)
    # decode one token through the cache, which starts with the prefix
    assert out.past_key_values.get_seq_length() == 3 + prompt
    token, mask, position = (
        input_ids[:, prompt : prompt + 1],
        attention_mask[:, : prompt + 1],
        position_ids[:, prompt : prompt + 1],
    )
    step = ours(
        token, attention_mask=mask, position_ids=position, past_key_values=out.past_key_values, use_cache=True
    )
    _, step_logits, _, _ = run_reference(reference, token, mask, position, past)
    torch.testing.assert_close(step.logits, step_logits, **FP32)


@torch.no_grad()
def test_without_multi_query_attention():
    ours = tiny_chatglm3(seed=6, multi_query_attention=False)
    reference = reference_for(ours)
    input_ids, attention_mask, position_ids = left_padded(seed=7)
    out = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    _, logits, _, _ = run_reference(reference, input_ids, attention_mask, position_ids)
    torch.testing.assert_close(out.logits, logits, **FP32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision(pair, dtype):
    """Both cast the RoPE table to the model dtype and rotate in it; compare at a half-precision tolerance."""
    ours = tiny_chatglm3(seed=1).to(dtype)
    reference = reference_for(ours)
    input_ids, attention_mask, position_ids = left_padded(seed=8)
    out = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    _, logits, _, _ = run_reference(reference, input_ids, attention_mask, position_ids)
    assert out.logits.dtype == dtype
    torch.testing.assert_close(out.logits.float(), logits.float(), atol=2e-2, rtol=2e-2)
    # and it stays close to fp32
    fp32 = pair[0](input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    assert (out.logits.float() - fp32).abs().max() < 0.1
