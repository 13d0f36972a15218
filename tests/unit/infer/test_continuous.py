"""continuous.generate_many: many greedy replies with finished rows dropped and freed rows refilled equal
``generate`` on each prompt alone, whatever the batch size, the order of the prompts or the model's cache kind;
what it cannot decode itself goes through ``model.generate`` in length-sorted batches."""

from __future__ import annotations

import random

import pytest
import torch

from glmtune.infer.continuous import generate_in_batches, generate_many, supported
from glmtune.infer.generate import GenerationConfig, generate
from tests.tiny import GENERATE_CHARS, generate_llama, generate_tokenizer, randomize_, tiny_gemma_config


@pytest.fixture(scope="module")
def tokenizer():
    return generate_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return generate_llama(tokenizer)


@pytest.fixture(scope="module")
def gemma(tokenizer):
    """Gemma 3 text: a sliding-window layer (window 4) and a full one; its cache cannot take new rows."""
    from transformers import Gemma3ForCausalLM

    config = tiny_gemma_config(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return randomize_(Gemma3ForCausalLM(config), seed=3).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """17 prompts of 1 to 24 characters (seeded): more than the batch sizes tested, so freed rows are refilled."""
    rng = random.Random(0)
    texts = ["".join(rng.choice(GENERATE_CHARS) for _ in range(rng.randint(1, 24))) for _ in range(17)]
    return [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]


def alone(model, tokenizer, prompts, cfg):
    return [generate(model, tokenizer, [one], cfg)[0] for one in prompts]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_replies_equal_each_prompt_alone_at_any_batch_size(llama, tokenizer, prompts, penalty):
    cfg = GenerationConfig(max_new_tokens=16, repetition_penalty=penalty)
    assert supported(llama, cfg)
    expected = alone(llama, tokenizer, prompts, cfg)
    reasons = {reply.finish_reason for reply in expected}
    assert reasons == {"stop", "length"}, "rows finish at different steps: some leave the batch early"
    with torch.no_grad():
        for batch_size in (1, 3, 8, 64):
            assert generate_many(llama, tokenizer, prompts, cfg, batch_size) == expected, batch_size


def test_a_sliding_window_cache_runs_in_waves_and_still_equals_each_prompt_alone(gemma, tokenizer, prompts):
    cfg = GenerationConfig(max_new_tokens=12)
    assert supported(gemma, cfg)
    with torch.no_grad():
        assert generate_many(gemma, tokenizer, prompts, cfg, 5) == alone(gemma, tokenizer, prompts, cfg)


def test_the_order_of_the_prompts_does_not_change_a_reply(llama, tokenizer, prompts):
    cfg = GenerationConfig(max_new_tokens=10)
    order = list(range(len(prompts)))
    random.Random(1).shuffle(order)
    with torch.no_grad():
        replies = generate_many(llama, tokenizer, prompts, cfg, 4)
        shuffled = generate_many(llama, tokenizer, [prompts[i] for i in order], cfg, 4)
    assert shuffled == [replies[i] for i in order]


def test_a_lora_model_under_glmtunes_wrapper_decodes_itself(tiny_model_dir):
    from glmtune import methods
    from glmtune.core.config import MethodConfig, ModelConfig
    from glmtune.models.causal import load_language_model

    model, tokenizer = load_language_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    methods.apply(model, MethodConfig(name="lora", lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter: B no longer zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.eval()
    cfg = GenerationConfig(max_new_tokens=8)
    ids = [tokenizer(text)["input_ids"] for text in ("好", "abc好坏", "xyz", "坏坏坏好")]
    assert supported(model, cfg)
    with torch.no_grad():
        assert generate_many(model, tokenizer, ids, cfg, 2) == alone(model, tokenizer, ids, cfg)


def test_progress_is_reported_once_per_reply(llama, tokenizer, prompts):
    done: list[int] = []
    with torch.no_grad():
        generate_many(llama, tokenizer, prompts, GenerationConfig(max_new_tokens=6), 4, on_done=done.append)
    assert sum(done) == len(prompts)
    assert generate_many(llama, tokenizer, [], GenerationConfig(), 4) == []


@pytest.mark.parametrize(
    "settings",
    [{"do_sample": True, "seed": 3}, {"stop": ["好"]}],
    ids=["sampling", "stop strings"],
)
def test_what_it_does_not_decode_goes_through_model_generate(llama, tokenizer, prompts, settings):
    cfg = GenerationConfig(max_new_tokens=8, **settings)
    assert not supported(llama, cfg)
    with torch.no_grad():
        assert generate_many(llama, tokenizer, prompts, cfg, 4) == generate_in_batches(
            llama, tokenizer, prompts, cfg, 4
        )


def test_a_model_whose_generation_config_changes_scores_is_left_to_model_generate(tokenizer):
    model = generate_llama(tokenizer)
    model.generation_config.no_repeat_ngram_size = 2
    assert not supported(model, GenerationConfig())


def test_prompt_learning_adapters_are_left_to_model_generate(tiny_model_dir):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    assert not supported(peft_model, GenerationConfig())
