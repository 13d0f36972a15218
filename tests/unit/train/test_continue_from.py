"""Continuing from a finished run (``--from`` / ``model.from_run``) and replay (``data.replay``): 2-step runs of
the tiny model through the real CLI, the earlier weights checked against peft's own adapter reading."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from glmtune.core import config as config_mod
from glmtune.core.errors import UserError
from glmtune.data.classification import Example
from glmtune.data.replay import REASON, mix, replay_count
from glmtune.data.summary import SplitCounts
from tests.helpers import review, run_cli, sft_config, tiny_config, train, write_jsonl

pytestmark = pytest.mark.usefixtures("reset_accelerate")


def reviews(path: Path, seed: int, n: int = 64, labels: tuple[str, ...] = ("pos", "neg")) -> Path:
    rng = random.Random(seed)
    rows = [{"text": review(rng, i % 2 == 0), "label": labels[i % len(labels)]} for i in range(n)]
    return write_jsonl(path, rows)


def folder(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished 2-step LoRA run on the first half, labels in a non-sorted order (pos before neg); made once,
    only read by the tests."""
    from glmtune.train import reset_process_state

    base = tmp_path_factory.mktemp("earlier")
    cfg = tiny_config(tiny_model_dir, reviews(base / "first.jsonl", seed=1), data={"labels": ["pos", "neg"]})
    reset_process_state()
    run = train(base, cfg)
    reset_process_state()
    return run


def test_replay_count_and_mix_are_seeded_and_capped():
    assert replay_count(0.2, 100, 1000) == 20
    assert replay_count(0.2, 100, 7) == 7  # at most what the earlier split has
    assert replay_count(0.0, 100, 1000) == 0
    counts = SplitCounts(read=10)
    new = list(range(10))
    old = list(range(100, 150))
    mixed = mix(new, old, 0.5, 10, seed=3, counts=counts)
    assert mixed[:10] == new and len(mixed) == 15 and set(mixed[10:]) <= set(old)
    assert len(set(mixed[10:])) == 5  # without replacement
    assert mix(new, old, 0.5, 10, seed=3, counts=SplitCounts()) == mixed  # seeded
    assert counts.added == {REASON: 5} and counts.used == 15


def test_continued_run_starts_from_the_earlier_weights_keeps_labels_and_records_lineage(
    tmp_path, tiny_model_dir, earlier
):
    """--from with replay: the earlier adapter and head are what training starts from (peft's own reading of the
    earlier adapter folder), the label order is kept, replayed examples are counted, lineage.json says where from;
    a third run continuing from the second chains the lineage."""
    from peft import get_peft_model_state_dict

    from glmtune import methods
    from glmtune.train import continue_from, tasks

    second = reviews(tmp_path / "second.jsonl", seed=2)
    cfg = tiny_config(tiny_model_dir, second, data={"replay": 0.25})
    run = train(folder(tmp_path, "b"), cfg, "--from", str(earlier))

    assert json.loads((run / "labels.json").read_text()) == ["pos", "neg"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["from_run"] == str(earlier.resolve()) and saved["data"]["labels"] == ["pos", "neg"]
    train_counts = json.loads((run / "data_summary.json").read_text())["train"]["counts"]
    replayed = round(0.25 * train_counts["read"])
    assert (
        train_counts["added"] == {REASON: replayed}
        and train_counts["used"] == train_counts["read"] + replayed
    )
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["from"] == str(earlier.resolve()) and lineage["lineage"] is None
    assert lineage["config_sha256"] == hashlib.sha256((earlier / "config.yaml").read_bytes()).hexdigest()
    assert lineage["metrics"] == json.loads((earlier / "metrics.json").read_text())
    assert lineage["replay"] == {"fraction": 0.25, "examples": replayed}

    # The starting weights: build the continued config's model, apply the method, restore from the earlier run.
    loaded = config_mod.load(run / "config.yaml")
    task = tasks.create(loaded)
    task.load_data()
    model, _ = task.build_model()
    methods.apply(model, loaded.method)
    continue_from.restore_weights(model, loaded)
    reference = load_file(str(earlier / "adapter" / "adapter_model.safetensors"))
    ours = get_peft_model_state_dict(model.backbone)
    assert ours.keys() == reference.keys()
    assert all(ours[k].equal(reference[k]) for k in reference)
    head = load_file(str(earlier / "head.safetensors"))
    assert all(model.head.state_dict()[k].equal(v) for k, v in head.items())
    after = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(not after[k].equal(reference[k]) for k in reference), "the continued run trained further"

    third = train(folder(tmp_path, "c"), tiny_config(tiny_model_dir, second), "--from", str(run))
    chain = json.loads((third / "lineage.json").read_text())
    assert chain["from"] == str(run.resolve()) and chain["lineage"]["from"] == str(earlier.resolve())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"num_layers": 1}}, "model.num_layers"),
        ({"method": {"name": "full"}}, "method.name"),
        ({"method": {"name": "lora", "lora_r": 2, "lora_alpha": 4}}, "method.lora_r"),
        ({"task": "sft"}, "task"),
    ],
)
def test_an_incompatible_config_is_refused_in_one_line(
    tmp_path, tiny_model_dir, earlier, change, field, capsys
):
    second = reviews(tmp_path / "second.jsonl", seed=2)
    cfg = tiny_config(tiny_model_dir, second, **change)
    if change.get("task") == "sft":
        cfg = sft_config(tiny_model_dir, {"train_file": str(second)})
    err = run_cli(folder(tmp_path, "b"), cfg, "--from", str(earlier), capsys=capsys)
    assert f"field '{field}'" in err and str(earlier) in err


def test_a_new_label_is_refused_naming_the_earlier_run(tmp_path, tiny_model_dir, earlier, capsys):
    second = reviews(tmp_path / "second.jsonl", seed=2, labels=("pos", "neg", "mid"))
    err = run_cli(
        folder(tmp_path, "b"), tiny_config(tiny_model_dir, second), "--from", str(earlier), capsys=capsys
    )
    assert "label 'mid' is not in the earlier run's labels" in err and "labels.json" in err


def test_fewer_trainable_layers_than_the_earlier_run_are_refused(
    tmp_path, tiny_model_dir, sentiment_file, capsys
):
    method = {"name": "freeze", "trainable_layers": 2}
    first = train(folder(tmp_path, "a"), tiny_config(tiny_model_dir, sentiment_file, method=method))
    cfg = tiny_config(tiny_model_dir, sentiment_file, method={**method, "trainable_layers": 1})
    capsys.readouterr()  # the first run's progress bars
    with pytest.raises(SystemExit) as exit_info:  # refused once the model is built, before the run folder
        train(folder(tmp_path, "b"), cfg, "--from", str(first))
    assert exit_info.value.code == 2 and not (tmp_path / "b" / "run").exists()
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert last.startswith("glmtune: error: field 'method.trainable_layers'")


def test_config_checks(tmp_path, tiny_model_dir, sentiment_file):
    with pytest.raises(UserError, match="data.replay"):
        config_mod.from_dict(tiny_config(tiny_model_dir, sentiment_file, data={"replay": 0.2}))
    with pytest.raises(UserError, match="model.from_run"):
        config_mod.from_dict(
            {"task": "preference", "model": {"from_run": str(tmp_path)}, "data": {"dataset": "x"}}
        )
    with pytest.raises(UserError, match="model.from_run"):  # not a finished run
        from glmtune.train import continue_from

        continue_from.check(
            config_mod.from_dict(tiny_config(tiny_model_dir, sentiment_file, model={"from_run": "x"}))
        )


def test_sft_continues_with_replay(tmp_path, tiny_model_dir, chat_file):
    """On the same file (so the same validation split), the continued run's untuned ("before") loss is the earlier
    run's final validation loss: it starts from those weights, not the base model's."""
    data = {"train_file": str(chat_file)}
    quick = {"generation": "none"}
    first = train(folder(tmp_path, "a"), sft_config(tiny_model_dir, data, eval=quick))
    cfg = sft_config(tiny_model_dir, {**data, "replay": 0.5}, eval=quick)
    run = train(folder(tmp_path, "b"), cfg, "--from", str(first))
    counts = json.loads((run / "data_summary.json").read_text())["train"]["counts"]
    assert counts["added"] == {REASON: round(0.5 * counts["read"])}
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["from"] == str(first.resolve()) and lineage["task"] == "sft"
    before = json.loads((run / "metrics.json").read_text())["before"]["loss"]
    earlier_metrics = json.loads((first / "metrics.json").read_text())
    assert before == pytest.approx(earlier_metrics["validation"]["loss"], abs=1e-5)
    assert before != pytest.approx(earlier_metrics["before"]["loss"], abs=1e-3)


def test_earlier_examples_are_reindexed_by_label_name(tmp_path, sentiment_file):
    from glmtune.data.replay import earlier_examples

    data = config_mod.from_dict({"data": {"train_file": str(sentiment_file), "labels": ["neg", "pos"]}}).data
    examples = earlier_examples(data, ["pos", "neg"])
    assert examples and all(isinstance(e, Example) for e in examples)
    rows = {
        json.loads(line)["text"]: json.loads(line)["label"]
        for line in sentiment_file.read_text().splitlines()
    }
    assert all(["pos", "neg"][e.label] == rows[e.text] for e in examples)


def test_continuing_into_the_earlier_folder_is_refused(tmp_path, tiny_model_dir, sentiment_file, capsys):
    cfg = tiny_config(tiny_model_dir, sentiment_file)
    err = run_cli(tmp_path, cfg, "--overwrite", "--from", str(tmp_path / "run"), capsys=capsys)
    assert "field 'model.from_run': the run to continue from is the output folder" in err


def test_replayed_examples_are_redacted_by_this_runs_data_redact(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from glmtune.train.continue_from import replay
    from tests.helpers import write_jsonl

    rows = [{"text": f"电话13800138{i:03d}很好", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    old = write_jsonl(tmp_path / "old.jsonl", rows)
    earlier = SimpleNamespace(cfg=config_mod.from_dict(tiny_config(tiny_model_dir, old)))
    cfg = config_mod.from_dict(
        tiny_config(
            tiny_model_dir,
            old,
            model={
                "from_run": str(tmp_path)
            },  # replay's source is ``earlier`` below; the path is not read here
            data={"replay": 0.5, "redact": ["phone"], "labels": ["neg", "pos"]},
        )
    )
    mixed = replay(cfg, earlier, [], 20, SplitCounts())
    assert len(mixed) == min(10, 40 - 16 - 16)  # half of 20, capped at the earlier training split
    assert all(e.text == "电话[PHONE]很好" for e in mixed)
