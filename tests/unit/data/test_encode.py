"""data.encode: special tokens kept through truncation, length-grouped deterministic batches, padding."""

from __future__ import annotations

import random

import pytest
import torch

from glmtune.core.errors import UserError
from glmtune.data import Example
from glmtune.data.encode import (
    ClassificationDataset,
    LengthGroupedBatchSampler,
    collate,
    encode_examples,
    encode_texts,
    make_loader,
)
from glmtune.models.load import pad_token_id

CHARS = "abcdefghijklmnopqrstuvwxyz 好差"
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def tokenizer(template: str | None = "<bos> $A", **special):
    """A character-level fast tokenizer built in memory; ``template`` is its post-processor (None: none)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *CHARS])}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    if template is not None:
        inner.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
        )
    tokens = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tokens.update(special)
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, **{k: v for k, v in tokens.items() if v is not None}
    )


# --------------------------------------------------------------------------- tokenisation


def test_encode_uses_the_tokenizers_bos():
    ids, truncated = encode_texts(tokenizer(), ["ab", "好"], max_seq_len=8)
    assert ids == [[BOS, 4, 5], [BOS, 4 + CHARS.index("好")]] and truncated == 0


def test_bos_is_prepended_when_the_tokenizer_does_not_add_it():
    assert encode_texts(tokenizer(template=None), ["ab"], 8).ids == [[BOS, 4, 5]]
    assert encode_texts(tokenizer(template=None, bos_token=None), ["ab"], 8).ids == [[4, 5]]


def test_truncation_keeps_bos_and_counts():
    ids, truncated = encode_texts(tokenizer(), ["abcdefgh", "abc", "abcd"], max_seq_len=4)
    assert ids == [[BOS, 4, 5, 6], [BOS, 4, 5, 6], [BOS, 4, 5, 6]]
    assert truncated == 2
    ids, truncated = encode_texts(tokenizer(template=None), ["abcdefgh"], max_seq_len=3)
    assert ids == [[BOS, 4, 5]] and truncated == 1


def test_truncation_keeps_a_trailing_eos():
    ids, truncated = encode_texts(tokenizer("<bos> $A <eos>"), ["abcdefgh", "ab"], max_seq_len=5)
    assert ids == [[BOS, 4, 5, 6, EOS], [BOS, 4, 5, EOS]] and truncated == 1


def test_max_seq_len_without_room_for_text():
    with pytest.raises(UserError) as caught:
        encode_texts(tokenizer("<bos> $A <eos>"), ["ab"], max_seq_len=2)
    assert str(caught.value).startswith("field 'train.max_seq_len': got 2")
    assert str(caught.value).endswith("expected more than 2")


def test_pad_id_falls_back_to_eos():
    assert pad_token_id(tokenizer()) == PAD
    assert pad_token_id(tokenizer(pad_token=None)) == EOS
    with pytest.raises(UserError, match="neither a pad nor an EOS token"):
        pad_token_id(tokenizer(pad_token=None, eos_token=None))


def test_encode_examples_builds_a_dataset():
    examples = [Example("abcdef", 1, 1, "f"), Example("ab", 0, 2, "f")]
    dataset = encode_examples(tokenizer(pad_token=None), examples, max_seq_len=4)
    assert len(dataset) == 2 and dataset.lengths == [4, 3] and dataset.num_truncated == 1
    assert dataset.pad_id == EOS
    assert dataset[1] == {"input_ids": [BOS, 4, 5], "label": 0, "index": 1}


# --------------------------------------------------------------------------- collate


def test_collate_pads_right_to_the_longest_in_the_batch():
    batch = [{"input_ids": [2, 7, 8], "label": 1, "index": 5}, {"input_ids": [2], "label": 0, "index": 9}]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[2, 7, 8], [2, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [1, 0] and out["index"].tolist() == [5, 9]
    assert all(tensor.dtype == torch.long for tensor in out.values())
    assert out["input_ids"].shape == out["attention_mask"].shape == (2, 3) and out["labels"].shape == (2,)


# --------------------------------------------------------------------------- batching


def random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


@pytest.mark.parametrize(
    "n, batch_size, drop_last", [(1000, 8, False), (1003, 8, False), (1003, 8, True), (5, 8, False)]
)
def test_every_index_once_per_epoch_and_only_the_last_batch_short(n, batch_size, drop_last):
    sampler = LengthGroupedBatchSampler(random_lengths(n), batch_size, seed=1, drop_last=drop_last)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for batch in batches for i in batch]
        expected = n - n % batch_size if drop_last else n
        assert len(flat) == len(set(flat)) == expected and set(flat) <= set(range(n))
        assert all(len(batch) == batch_size for batch in batches[:-1])


def test_deterministic_per_seed_and_epoch():
    def batches(seed, epoch):
        sampler = LengthGroupedBatchSampler(random_lengths(500), 4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(3, 1) == batches(3, 1)
    assert batches(3, 1) != batches(3, 2)
    assert batches(3, 1) != batches(4, 1)


def mean_padding(lengths, batches):
    return sum(max(lengths[i] for i in b) - lengths[i] for b in batches for i in b) / len(lengths)


def test_grouping_lowers_padding_compared_to_random_batches():
    lengths = random_lengths(2000)
    grouped = list(LengthGroupedBatchSampler(lengths, 16, seed=0))
    plain = list(LengthGroupedBatchSampler(lengths, 16, seed=0, group_by_length=False))
    assert sorted(i for b in plain for i in b) == list(range(2000))
    assert mean_padding(lengths, grouped) < 0.25 * mean_padding(lengths, plain)
    # the batch order is still shuffled: not simply longest first
    firsts = [max(lengths[i] for i in batch) for batch in grouped]
    assert firsts != sorted(firsts, reverse=True)


def test_unshuffled_batches_are_in_order_or_sorted_by_length():
    lengths = [3, 9, 1, 9, 5]
    assert list(LengthGroupedBatchSampler(lengths, 2, shuffle=False, group_by_length=False)) == [
        [0, 1],
        [2, 3],
        [4],
    ]
    assert list(LengthGroupedBatchSampler(lengths, 2, shuffle=False)) == [[1, 3], [4, 0], [2]]


@pytest.fixture
def clean_accelerate_state():
    """DataLoaderShard registers with accelerate's process-wide GradientState: leave it as we found it."""
    from glmtune.train import reset_process_state

    yield
    reset_process_state()


def test_sharded_by_accelerate_for_two_processes(clean_accelerate_state):
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    n, batch_size = 203, 8
    dataset = ClassificationDataset([[BOS] * length for length in random_lengths(n)], [0] * n, pad_id=PAD)
    seen = []
    for rank in range(2):
        sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, seed=5)
        shard = BatchSamplerShard(sampler, num_processes=2, process_index=rank)
        loader = DataLoaderShard(dataset, batch_sampler=shard, collate_fn=lambda b: [x["index"] for x in b])
        loader.set_epoch(2)  # what the training loop does; accelerate reaches the sampler through the shard
        assert sampler.epoch == 2
        batches = list(loader)
        assert len(batches) == len(shard) == len(loader)
        assert all(len(batch) == batch_size for batch in batches)
        seen.append(batches)
    flat = [i for batches in seen for batch in batches for i in batch]
    assert set(flat) == set(range(n))  # every example; only the end is padded out by repeating the start
    assert len(flat) - n < 2 * batch_size
    assert seen[0] != seen[1]


def test_make_loader_end_to_end():
    texts = ["abcdefghij"[: 1 + i % 10] for i in range(37)]
    examples = [Example(text, i % 2, i + 1, "mem") for i, text in enumerate(texts)]
    dataset = encode_examples(tokenizer(), examples, max_seq_len=8)
    loader = make_loader(dataset, batch_size=8, seed=0, shuffle=True, group_by_length=True)
    assert len(loader) == 5
    indices = []
    for batch in loader:
        assert batch["input_ids"][:, 0].eq(BOS).all()
        assert (
            batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
        )  # padded to the batch's longest
        assert batch["labels"].tolist() == [i % 2 for i in batch["index"].tolist()]
        indices += batch["index"].tolist()
    assert sorted(indices) == list(range(37))
    evaluation = make_loader(dataset, batch_size=8, shuffle=False, group_by_length=False, pad_id=PAD)
    assert torch.cat([batch["index"] for batch in evaluation]).tolist() == list(range(37))
