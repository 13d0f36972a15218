"""generate: batched left-padded generation equals one prompt at a time; stop ids and stop strings end a reply
(and are cut from its text); streaming yields pieces that join to the same text; seeded sampling repeats."""

from __future__ import annotations

import pytest
import torch

from glmtune.core.errors import UserError
from glmtune.infer.generate import GenerationConfig, finish, generate, stream
from tests.tiny import generate_llama, generate_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """Characters as tokens, joined back without spaces (a Fuse decoder), with <bos>/<eos>/<pad>."""
    return generate_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A seeded 2-layer Llama whose matrices are larger than the init std, so the reply depends on the prompt."""
    return generate_llama(tokenizer)


def prompt(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]


PROMPTS = ["你好", "abc def", "天气很好。0123456789", "q"]


def test_batched_left_padded_greedy_equals_each_prompt_alone(model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=12)
    ids = [prompt(tokenizer, text) for text in PROMPTS]
    batched = generate(model, tokenizer, ids, cfg)
    alone = [generate(model, tokenizer, [one], cfg)[0] for one in ids]
    assert batched == alone
    assert len({g.text for g in batched}) > 1  # the replies differ: the prompts matter
    assert {g.finish_reason for g in batched} == {"stop", "length"}  # (this random model emits EOS in 2 of 4)
    for reply in batched:
        if reply.finish_reason == "length":
            assert len(reply.token_ids) == 12
        else:  # EOS ended it: the ids keep it, the text does not, and no padding follows
            assert reply.token_ids[-1] == tokenizer.eos_token_id and len(reply.token_ids) < 12
        assert reply.text == tokenizer.decode(reply.token_ids, skip_special_tokens=True)


def test_stop_ids_and_stop_strings_end_the_reply(model, tokenizer):
    ids = prompt(tokenizer, PROMPTS[3])
    free = generate(model, tokenizer, [ids], GenerationConfig(max_new_tokens=12))[0]
    assert free.finish_reason == "length"
    stop_token = free.token_ids[5]
    first = free.token_ids.index(stop_token)
    by_id = generate(model, tokenizer, [ids], GenerationConfig(max_new_tokens=12, stop_ids=[stop_token]))[0]
    assert by_id.finish_reason == "stop"
    assert by_id.token_ids == free.token_ids[: first + 1]  # ends with the stop token
    assert by_id.text == tokenizer.decode(free.token_ids[:first])  # which the text leaves out

    stop_string = free.text[4:6]
    cut = free.text.index(stop_string)
    by_string = generate(model, tokenizer, [ids], GenerationConfig(max_new_tokens=12, stop=[stop_string]))[0]
    assert by_string.finish_reason == "stop" and by_string.text == free.text[:cut]
    assert tokenizer.decode(by_string.token_ids).endswith(stop_string)  # generation ended right there
    assert len(by_string.token_ids) == cut + len(stop_string)  # one char per token here


def test_finish_cuts_at_whichever_stop_comes_first(tokenizer):
    ids = tokenizer("ab。cd", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert finish(tokenizer, ids + [eos, pad], [eos], [], 8).text == "ab。cd"
    assert finish(tokenizer, ids + [eos, pad], [eos], ["。"], 8) == finish(
        tokenizer, ids[:3], [eos], ["。"], 8
    )
    assert finish(tokenizer, ids, [eos], ["。"], 8).text == "ab"
    assert finish(tokenizer, ids, [eos], ["zz"], 5).finish_reason == "length"


@pytest.mark.parametrize("stops", [[], ["。"], ["0", "ab"]])
def test_streamed_pieces_join_to_the_generated_text(model, tokenizer, stops):
    for text in (PROMPTS[0], PROMPTS[1], PROMPTS[3]):
        ids = prompt(tokenizer, text)
        free = generate(model, tokenizer, [ids], GenerationConfig(max_new_tokens=16))[0]
        stop = stops or [free.text[3:5]]  # make sure some stop string really occurs
        cfg = GenerationConfig(max_new_tokens=16, stop=stop)
        expected = generate(model, tokenizer, [ids], cfg)[0]
        streamed = stream(model, tokenizer, ids, cfg)
        pieces = list(streamed)
        assert "".join(pieces) == expected.text and all(pieces)
        assert streamed.result == expected


def test_stream_yields_while_generating_and_stops_when_left(model, tokenizer):
    streamed = stream(model, tokenizer, prompt(tokenizer, "abc"), GenerationConfig(max_new_tokens=200))
    pieces = iter(streamed)
    first = next(pieces)
    assert first and streamed.finish_reason is None  # a piece arrived before the reply was finished
    pieces.close()  # the reader leaves: generation is cancelled, the thread ends
    assert not streamed._thread.is_alive()


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(model, tokenizer):
    ids = [prompt(tokenizer, text) for text in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=20, top_p=0.95, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = generate(model, tokenizer, ids, cfg)
    assert torch.rand(1) == before  # sampling used a forked RNG
    assert first == generate(model, tokenizer, ids, cfg)
    assert first != generate(model, tokenizer, ids, GenerationConfig(**{**cfg.__dict__, "seed": 8}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_new_tokens", 0), ("temperature", 0), ("top_p", 1.5), ("top_k", -1), ("stop", [""])],
)
def test_bad_settings_are_user_errors(field, value):
    with pytest.raises(UserError, match=f"field 'generate.{field}'"):
        GenerationConfig(**{field: value})


def test_a_reply_cut_mid_character_by_max_new_tokens_has_no_half_character():
    """Byte-level BPE splits a CJK character over tokens: the text of a 'length' reply drops the half one."""
    from glmtune.infer.generate import finish

    class HalfCharacter:
        def decode(self, ids, **_):
            return "狭" + "\ufffd" * (len(ids) - 1)

    reply = finish(HalfCharacter(), [7, 8], stop_ids=[0], stops=[], max_new_tokens=2)
    assert reply.text == "狭" and reply.finish_reason == "length" and reply.token_ids == [7, 8]
